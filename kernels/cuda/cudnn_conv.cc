#include "kernels/cuda/cudnn_conv.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_check.h"

#if ZOETROPE_HAS_CUDNN
#include <cudnn.h>
#endif

namespace zoetrope::cuda {

#if ZOETROPE_HAS_CUDNN

bool BuiltWithCudnn() { return true; }

#define ZCUDNN_CHECK(call)                                                                               \
  do {                                                                                                   \
    const cudnnStatus_t zcudnn_status = (call);                                                          \
    ZCHECK_MSG(zcudnn_status == CUDNN_STATUS_SUCCESS, #call << ": " << cudnnGetErrorString(zcudnn_status)); \
  } while (0)

struct CudnnConv3d::Handles {
  cudnnHandle_t handle = nullptr;
  bool tf32 = true;
  // The algorithm cuDNN's heuristics rank first among those within the workspace limit, per call shape
  // (batch, channels, size, kernel, padding): a chunked decode repeats the same few shapes.
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>,
           cudnnConvolutionFwdAlgo_t>
      algorithms;
};

absl::StatusOr<std::unique_ptr<CudnnConv3d>> CudnnConv3d::Create(CUstream_st* stream, bool tf32) {
  auto handles = std::make_unique<Handles>();
  if (cudnnStatus_t status = cudnnCreate(&handles->handle); status != CUDNN_STATUS_SUCCESS) {
    return absl::InternalError(absl::StrCat("cudnnCreate: ", cudnnGetErrorString(status)));
  }
  if (cudnnStatus_t status = cudnnSetStream(handles->handle, stream); status != CUDNN_STATUS_SUCCESS) {
    cudnnDestroy(handles->handle);
    return absl::InternalError(absl::StrCat("cudnnSetStream: ", cudnnGetErrorString(status)));
  }
  handles->tf32 = tf32;
  return std::unique_ptr<CudnnConv3d>(new CudnnConv3d(std::move(handles)));
}

CudnnConv3d::CudnnConv3d(std::unique_ptr<Handles> handles) : handles_(std::move(handles)) {}

CudnnConv3d::~CudnnConv3d() {
  if (handles_ && handles_->handle != nullptr) cudnnDestroy(handles_->handle);
}

namespace {

// The descriptors of one 2D convolution over `batch` frames, released at scope end.
struct Descriptors {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t convolution = nullptr;
  Descriptors(const CudnnConvShape& shape, int64_t batch, int64_t out_height, int64_t out_width, bool tf32) {
    ZCUDNN_CHECK(cudnnCreateTensorDescriptor(&x));
    ZCUDNN_CHECK(cudnnCreateTensorDescriptor(&y));
    ZCUDNN_CHECK(cudnnCreateFilterDescriptor(&w));
    ZCUDNN_CHECK(cudnnCreateConvolutionDescriptor(&convolution));
    ZCUDNN_CHECK(cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, static_cast<int>(batch),
                                            static_cast<int>(shape.in_channels), static_cast<int>(shape.height),
                                            static_cast<int>(shape.width)));
    ZCUDNN_CHECK(cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, static_cast<int>(batch),
                                            static_cast<int>(shape.out_channels), static_cast<int>(out_height),
                                            static_cast<int>(out_width)));
    ZCUDNN_CHECK(cudnnSetFilter4dDescriptor(w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW,
                                            static_cast<int>(shape.out_channels), static_cast<int>(shape.in_channels),
                                            static_cast<int>(shape.kernel_h), static_cast<int>(shape.kernel_w)));
    ZCUDNN_CHECK(cudnnSetConvolution2dDescriptor(convolution, static_cast<int>(shape.pad_height),
                                                 static_cast<int>(shape.pad_width), 1, 1, 1, 1,
                                                 CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    ZCUDNN_CHECK(cudnnSetConvolutionMathType(convolution, tf32 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH));
  }
  ~Descriptors() {
    cudnnDestroyConvolutionDescriptor(convolution);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyTensorDescriptor(x);
  }
};

}  // namespace

void CudnnConv3d::Run(const CudnnConvShape& shape, const float* x, const float* weight, float* tap_weight,
                      void* workspace, float* y) {
  const int64_t out_height = shape.height + 2 * shape.pad_height - shape.kernel_h + 1;
  const int64_t out_width = shape.width + 2 * shape.pad_width - shape.kernel_w + 1;
  const int64_t out_frame_elements = shape.out_channels * out_height * out_width;
  const int64_t in_frame_elements = shape.in_channels * shape.height * shape.width;
  cudaStream_t stream = nullptr;
  ZCUDNN_CHECK(cudnnGetStream(handles_->handle, &stream));
  // Taps accumulate (beta = 1), and a tap may skip frames (causal padding): start from zero.
  ZCUDA_CHECK(cudaMemsetAsync(y, 0, static_cast<size_t>(shape.frames * out_frame_elements) * sizeof(float), stream));
  const int64_t tap_elements = shape.kernel_h * shape.kernel_w;
  for (int64_t tap = 0; tap < shape.kernel_t; ++tap) {
    // Output frame t reads input frame t + tap − pad_front; only the range where it exists contributes.
    const int64_t first = std::max<int64_t>(0, shape.pad_front - tap);
    const int64_t last = std::min<int64_t>(shape.frames, shape.in_frames + shape.pad_front - tap);
    if (last <= first) continue;
    const int64_t batch = last - first;
    // weight[:, :, tap] as a contiguous [O, C, kh, kw] filter.
    const float* filter = weight;
    if (shape.kernel_t > 1) {
      ZCUDA_CHECK(cudaMemcpy2DAsync(tap_weight, tap_elements * sizeof(float), weight + tap * tap_elements,
                                    shape.kernel_t * tap_elements * sizeof(float), tap_elements * sizeof(float),
                                    shape.out_channels * shape.in_channels, cudaMemcpyDeviceToDevice, stream));
      filter = tap_weight;
    }
    Descriptors descriptors(shape, batch, out_height, out_width, handles_->tf32);
    const auto key = std::make_tuple(batch, shape.in_channels, shape.height, shape.width, shape.out_channels,
                                     shape.kernel_h, shape.kernel_w, shape.pad_height, shape.pad_width);
    auto found = handles_->algorithms.find(key);
    if (found == handles_->algorithms.end()) {
      constexpr int kCandidates = 8;
      cudnnConvolutionFwdAlgoPerf_t candidates[kCandidates];
      int returned = 0;
      ZCUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(handles_->handle, descriptors.x, descriptors.w,
                                                          descriptors.convolution, descriptors.y, kCandidates,
                                                          &returned, candidates));
      bool chosen = false;
      for (int i = 0; i < returned && !chosen; ++i) {
        if (candidates[i].status != CUDNN_STATUS_SUCCESS ||
            candidates[i].memory > static_cast<size_t>(workspace_limit())) {
          continue;
        }
        found = handles_->algorithms.emplace(key, candidates[i].algo).first;
        chosen = true;
      }
      ZCHECK_MSG(chosen, "cuDNN has no forward algorithm within " << workspace_limit()
                                                                  << " bytes of workspace for Conv3d batch " << batch
                                                                  << " channels " << shape.in_channels << "->"
                                                                  << shape.out_channels);
    }
    size_t workspace_bytes = 0;
    ZCUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(handles_->handle, descriptors.x, descriptors.w,
                                                         descriptors.convolution, descriptors.y, found->second,
                                                         &workspace_bytes));
    const float one = 1.0f;
    ZCUDNN_CHECK(cudnnConvolutionForward(handles_->handle, &one, descriptors.x,
                                         x + (first + tap - shape.pad_front) * in_frame_elements, descriptors.w,
                                         filter, descriptors.convolution, found->second, workspace, workspace_bytes,
                                         &one, descriptors.y, y + first * out_frame_elements));
  }
}

#else  // no cuDNN in this build

bool BuiltWithCudnn() { return false; }

struct CudnnConv3d::Handles {};

absl::StatusOr<std::unique_ptr<CudnnConv3d>> CudnnConv3d::Create(CUstream_st*, bool) {
  return absl::UnimplementedError("this build has no cuDNN (cudnn.h and libcudnn were not found at configure time)");
}

CudnnConv3d::CudnnConv3d(std::unique_ptr<Handles> handles) : handles_(std::move(handles)) {}
CudnnConv3d::~CudnnConv3d() = default;
void CudnnConv3d::Run(const CudnnConvShape&, const float*, const float*, float*, void*, float*) {
  ZCHECK_MSG(false, "CudnnConv3d::Run in a build without cuDNN");
}

#endif

}  // namespace zoetrope::cuda
