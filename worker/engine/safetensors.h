// safetensors reading (mmap, zero copy) and writing, single files and HF-style sharded checkpoints.
//
// Format: 8-byte little-endian header length N, an N-byte JSON header mapping tensor names to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the end of the header) plus an
// optional "__metadata__" object of strings, then the raw little-endian tensor bytes.
//
// Every error names the file and, where one is involved, the key. A corrupt file (truncated, bad JSON,
// header length past the end, offsets out of range, overlapping or not matching shape × dtype, unknown
// dtype, data not aligned to its element size) is rejected with a Status, never a crash. Shards named by an
// index must lie inside the index's folder: absolute paths, ".." and symbolic links leading out are refused.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace zoetrope {

struct TensorInfo {
  DType dtype;
  Shape shape;
  size_t begin = 0;  // byte offsets relative to the start of the data section
  size_t end = 0;
};

// One .safetensors file, memory-mapped read-only for as long as any tensor from it is alive.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const std::string& path() const { return path_; }
  // Sorted tensor names.
  std::vector<std::string> Keys() const;
  bool Contains(const std::string& key) const { return tensors_.count(key) != 0; }
  absl::StatusOr<TensorInfo> Info(const std::string& key) const;
  // Host tensor viewing the mapped bytes (no copy); keeps the mapping alive.
  absl::StatusOr<Tensor> Get(const std::string& key) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::shared_ptr<void> mapping_;  // owns the mmap
  const char* data_section_ = nullptr;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint: one .safetensors file, or shards listed by an HF `*.safetensors.index.json`
// ({"metadata": {...}, "weight_map": {key: shard file name}}), or a directory holding either.
class WeightSource {
 public:
  // `path` is a .safetensors file, an .index.json file, or a directory. A directory is searched for
  // `diffusion_pytorch_model.safetensors.index.json`, then `diffusion_pytorch_model.safetensors`, then
  // the only *.safetensors.index.json or the only *.safetensors file in it.
  static absl::StatusOr<std::unique_ptr<WeightSource>> Open(const std::string& path);

  // The file or index that was opened (for error messages) and the directory it is in.
  const std::string& description() const { return description_; }
  const std::string& directory() const { return directory_; }
  std::vector<std::string> Keys() const;
  bool Contains(const std::string& key) const;
  // The shard file holding `key` (for error messages).
  std::string FileOf(const std::string& key) const;
  absl::StatusOr<TensorInfo> Info(const std::string& key) const;
  absl::StatusOr<Tensor> Get(const std::string& key) const;

 private:
  WeightSource() = default;
  std::string description_;
  std::string directory_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> key_to_file_;
};

// Streams a file whose tensor list is known in advance, one tensor at a time, so multi-gigabyte
// checkpoints never need to be in memory at once. Tensors are written in the order declared.
// The file appears at `path` only after Finish() succeeds (temporary file + rename). A declaration that
// would put a tensor at an offset not aligned to its element size is refused (declare wider dtypes first).
class SafetensorsWriter {
 public:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
  };
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(const std::string& path, std::vector<Entry> entries,
                                                                   const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();  // removes the temporary file if Finish() was not reached
  // `tensor` must be the next declared entry's name, dtype and shape, on the host.
  absl::Status Write(const std::string& name, const Tensor& tensor);
  absl::Status Finish();

 private:
  SafetensorsWriter() = default;
  struct State;
  std::unique_ptr<State> state_;
};

// Writes host tensors (any of F32, BF16, F16, I64, I32), wider dtypes first and then in name order so that
// every tensor is aligned to its element size, with optional string metadata.
// Writes to a temporary file beside `path` and renames it, so a crash never leaves a half file.
absl::Status WriteSafetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace zoetrope
