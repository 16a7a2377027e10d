// A small baseline JPEG encoder (ITU-T T.81, JFIF), for live previews: no dependency, no allocation
// beyond the output, a few hundred microseconds for a preview-sized image.
//
// What it writes: one baseline sequential frame, 8-bit, three components (Y, Cb, Cr; the JFIF BT.601
// full-range conversion) with 4:2:0 chroma subsampling (2×2 box average), the example quantisation tables of
// Annex K scaled by quality as libjpeg does, and the Annex K Huffman tables. Any decoder reads it (the test
// decodes it with FFmpeg's mjpeg decoder).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace zoetrope {

// `rgb`: height × width × 3 bytes, interleaved, rows top to bottom. `quality` in [1, 100] (libjpeg's
// scale: 50 = the Annex K tables, 100 = all ones). Width and height in [1, 65535]. Returns the file's bytes.
absl::StatusOr<std::string> EncodeJpeg(const uint8_t* rgb, int width, int height, int quality);

}  // namespace zoetrope
