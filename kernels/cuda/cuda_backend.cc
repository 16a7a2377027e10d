// The CUDA backend's host side: argument checks, memory, cuBLASLt plans and kernel launches (the
// kernels themselves live in cuda_ops.cu and attention_kernel.cu). See cuda_backend.h for the policy.
#include "kernels/cuda/cuda_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/attention_kernel.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_device_scope.h"
#include "kernels/cuda/cudnn_conv.h"
#include "kernels/cuda/cuda_ops.cuh"

namespace zoetrope {
namespace {

constexpr size_t kGemmWorkspaceBytes = size_t{32} << 20;
// cuBLASLt candidates asked for per product shape, and the size from which they are timed.
constexpr int kGemmCandidates = 8;
constexpr double kGemmAutotuneMultiplyAdds = 1 << 30;
// im2col buffers of Conv3d are tiled over output rows to stay under this size.
constexpr size_t kConvColumnBudgetBytes = size_t{256} << 20;
// Uploads up to this size travel in kernel parameters (no pageable-memory synchronisation).
constexpr size_t kSmallUploadBytes = 4 * cuda::kParameterPayloadBytes;

bool IsFloat(DType dtype) { return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16; }

cuda::ElementType ElementTypeOf(DType dtype) {
  switch (dtype) {
    case DType::kF32: return cuda::ElementType::kF32;
    case DType::kBF16: return cuda::ElementType::kBF16;
    case DType::kF16: return cuda::ElementType::kF16;
    default: break;
  }
  ZCHECK_MSG(false, "not a floating-point dtype: " << DTypeName(dtype));
  return cuda::ElementType::kF32;
}

cudaDataType_t CudaDataTypeOf(DType dtype) {
  switch (dtype) {
    case DType::kF32: return CUDA_R_32F;
    case DType::kBF16: return CUDA_R_16BF;
    case DType::kF16: return CUDA_R_16F;
    default: break;
  }
  ZCHECK_MSG(false, "no cuBLAS type for " << DTypeName(dtype));
  return CUDA_R_32F;
}

cuda::ActivationCode ActivationCodeOf(Activation activation) {
  switch (activation) {
    case Activation::kNone: return cuda::ActivationCode::kNone;
    case Activation::kGeluTanh: return cuda::ActivationCode::kGeluTanh;
    case Activation::kSilu: return cuda::ActivationCode::kSilu;
  }
  return cuda::ActivationCode::kNone;
}

int PointerAlignment(const void* pointer) {
  const auto address = reinterpret_cast<uintptr_t>(pointer);
  int alignment = 256;
  while (alignment > 1 && address % alignment != 0) alignment /= 2;
  return alignment;
}

// A column-major cuBLASLt product C[m, n] = op(A)[m, k] · op(B)[k, n] (+ epilogue), everything that
// selects an algorithm except the pointers.
struct GemmShape {
  cublasOperation_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
  int64_t m = 0, n = 0, k = 0, lda = 0, ldb = 0, ldc = 0;
  cudaDataType_t operand_type = CUDA_R_32F, output_type = CUDA_R_32F;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  cudaDataType_t bias_type = CUDA_R_32F;
  int align_a = 256, align_b = 256, align_c = 256;
  // CUBLAS_COMPUTE_32F (fp32 accumulation; a true fp32 product for F32 operands) or
  // CUBLAS_COMPUTE_32F_FAST_TF32 (F32 operands rounded to TF32 on tensor cores; only Conv3d asks for it).
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;

  auto Tie() const {
    return std::tie(trans_a, trans_b, m, n, k, lda, ldb, ldc, operand_type, output_type, epilogue, bias_type, align_a,
                    align_b, align_c, compute);
  }
  bool operator<(const GemmShape& other) const { return Tie() < other.Tie(); }
};

struct GemmPlan {
  bool usable = false;  // false: cuBLASLt offers no algorithm (e.g. for this epilogue)
  cublasLtMatmulDesc_t operation = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algorithm{};
};

bool HasBias(cublasLtEpilogue_t epilogue) {
  return epilogue == CUBLASLT_EPILOGUE_BIAS || epilogue == CUBLASLT_EPILOGUE_GELU_BIAS ||
         epilogue == CUBLASLT_EPILOGUE_RELU_BIAS;
}


enum class LinearBias { kCompute, kF32, kSeparate };

// How Conv3d multiplies (the VAE's convolutions): see CudaBackendOptions::conv_precision.
enum class ConvPrecision { kBf16, kTf32, kF32 };

absl::StatusOr<ConvPrecision> ParseConvPrecision(const std::string& name) {
  if (name == "bf16") return ConvPrecision::kBf16;
  if (name == "tf32") return ConvPrecision::kTf32;
  if (name == "fp32") return ConvPrecision::kF32;
  return absl::InvalidArgumentError(
      absl::StrCat("conv_precision (ZOETROPE_CONV_PRECISION) must be bf16, tf32 or fp32, got '", name, "'"));
}

// Tiled attention (head widths without a flash kernel): query rows per tile are chosen so that one
// F32 score tile [rows, keys] stays under this size.
constexpr size_t kAttentionScoreBudgetBytes = size_t{256} << 20;

absl::StatusOr<LinearBias> ParseLinearBias(const std::string& name) {
  if (name == "compute") return LinearBias::kCompute;
  if (name == "f32") return LinearBias::kF32;
  if (name == "separate") return LinearBias::kSeparate;
  return absl::InvalidArgumentError(
      absl::StrCat("linear_bias (ZOETROPE_LINEAR_BIAS) must be compute, f32 or separate, got '", name, "'"));
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device_index, cudaStream_t stream, cublasLtHandle_t cublas,
              cuda::AttentionImplementation attention_implementation, LinearBias linear_bias,
              ConvPrecision conv_precision)
      : device_index_(device_index),
        stream_(stream),
        cublas_(cublas),
        attention_implementation_(attention_implementation),
        conv_precision_(conv_precision),
        linear_bias_(linear_bias),
        allocator_(CudaAllocator::Create(device_index)) {
    workspace_ = allocator_->Allocate(kGemmWorkspaceBytes);
  }

  ~CudaBackend() override {
    CudaDeviceScope scope(device_index_);
    cudaStreamSynchronize(stream_);
    cudnn_.reset();  // its handle enqueues on stream_, destroyed below
    for (auto& [shape, plan] : plans_) {
      if (plan.operation != nullptr) cublasLtMatmulDescDestroy(plan.operation);
      if (plan.a != nullptr) cublasLtMatrixLayoutDestroy(plan.a);
      if (plan.b != nullptr) cublasLtMatrixLayoutDestroy(plan.b);
      if (plan.c != nullptr) cublasLtMatrixLayoutDestroy(plan.c);
    }
    workspace_.reset();
    cublasLtDestroy(cublas_);
    cudaStreamDestroy(stream_);
  }

  CudaMemoryStats memory_stats() const { return allocator_->stats(); }
  // Conv3d through cuDNN from now on (CudaBackendOptions::conv_algorithm = "cudnn").
  void UseCudnnConvolutions(std::unique_ptr<cuda::CudnnConv3d> cudnn) { cudnn_ = std::move(cudnn); }
  cudaStream_t stream() const { return stream_; }
  bool RecordStreamUse(const Tensor& tensor, cudaStream_t stream) {
    if (!tensor.defined() || tensor.device() != device()) return false;
    return allocator_->RecordStreamUse(*tensor.storage(), stream);
  }

  Device device() const override { return Device::Cuda(device_index_); }
  std::string name() const override { return absl::StrCat("cuda:", device_index_); }
  DType compute_dtype() const override { return DType::kBF16; }

  // ---- memory ----
  Tensor Empty(const Shape& shape, DType dtype) override {
    CudaDeviceScope scope(device_index_);
    return New(shape, dtype);
  }

  Tensor Upload(const Tensor& host_tensor, DType dtype) override {
    ZCHECK_MSG(host_tensor.device().is_cpu(), "Upload needs a host tensor, got " << host_tensor.DebugString());
    CudaDeviceScope scope(device_index_);
    if (host_tensor.dtype() == dtype) {
      Tensor out = New(host_tensor.shape(), dtype);
      CopyHostToDevice(out.raw_data(), host_tensor.raw_data(), host_tensor.nbytes());
      return out;
    }
    ZCHECK_MSG(IsFloat(host_tensor.dtype()) && IsFloat(dtype),
               "Upload converts between F32, BF16 and F16 only: " << host_tensor.DebugString() << " to "
                                                                   << DTypeName(dtype));
    Tensor staged = New(host_tensor.shape(), host_tensor.dtype());
    CopyHostToDevice(staged.raw_data(), host_tensor.raw_data(), host_tensor.nbytes());
    return CastOnDevice(staged, dtype);
  }

  Tensor ToHost(const Tensor& tensor) override {
    ZCHECK_MSG(tensor.device() == device(), "ToHost of " << tensor.DebugString() << " on " << name());
    CudaDeviceScope scope(device_index_);
    Tensor host = Tensor::Host(tensor.shape(), tensor.dtype());
    if (tensor.nbytes() > 0) {
      ZCUDA_CHECK(cudaMemcpyAsync(host.raw_data(), tensor.raw_data(), tensor.nbytes(), cudaMemcpyDeviceToHost, stream_));
    }
    ZCUDA_CHECK(cudaStreamSynchronize(stream_));
    return host;
  }

  Tensor Cast(const Tensor& tensor, DType dtype) override {
    CheckOnDevice(tensor, "Cast");
    CudaDeviceScope scope(device_index_);
    return CastOnDevice(tensor, dtype);
  }

  void CopyInto(const Tensor& destination, const Tensor& source) override {
    ZCHECK_MSG(destination.numel() == source.numel(),
               "CopyInto " << source.DebugString() << " -> " << destination.DebugString());
    CheckOnDevice(destination, "CopyInto");
    CheckOnDevice(source, "CopyInto");
    CudaDeviceScope scope(device_index_);
    if (destination.dtype() == source.dtype()) {
      if (source.nbytes() > 0) {
        ZCUDA_CHECK(cudaMemcpyAsync(destination.raw_data(), source.raw_data(), source.nbytes(),
                                    cudaMemcpyDeviceToDevice, stream_));
      }
      return;
    }
    cuda::LaunchCast(source.raw_data(), ElementTypeOf(source.dtype()), destination.raw_data(),
                     ElementTypeOf(destination.dtype()), source.numel(), stream_);
  }

  void Synchronize() override {
    CudaDeviceScope scope(device_index_);
    ZCUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  // ---- dense algebra ----
  Tensor Linear(const Tensor& x, const Tensor& weight, const Tensor* bias, Activation activation) override {
    ZCHECK_MSG(weight.rank() == 2 && x.rank() >= 1 && x.dim(-1) == weight.dim(1),
               "Linear x " << x.DebugString() << " weight " << weight.DebugString());
    CheckOnDevice(x, "Linear");
    CheckOnDevice(weight, "Linear");
    CudaDeviceScope scope(device_index_);
    const int64_t inputs = weight.dim(1), outputs = weight.dim(0);
    const int64_t rows = x.numel() / std::max<int64_t>(inputs, 1);
    const DType dtype = weight.dtype();
    const Tensor input = x.dtype() == dtype ? x : CastOnDevice(x, dtype);
    Shape out_shape = x.shape();
    out_shape.back() = outputs;
    Tensor y = New(out_shape, dtype);
    if (y.numel() == 0) return y;

    // Where the bias is added: CudaBackendOptions::linear_bias (cuda_backend.h) says why "compute" is the default.
    Tensor bias32;
    if (bias != nullptr) {
      ZCHECK_MSG(bias->numel() == outputs, "Linear bias " << bias->DebugString() << " for " << outputs << " outputs");
      CheckOnDevice(*bias, "Linear");
      bias32 = bias->dtype() == DType::kF32 ? *bias : CastOnDevice(*bias, DType::kF32);
    }
    Tensor epilogue_bias = bias32;
    if (bias != nullptr && linear_bias_ == LinearBias::kCompute && dtype != DType::kF32) {
      epilogue_bias = CastOnDevice(bias32, dtype);
    }
    // y[N, out] row-major is C[out, N] column-major = Wᵀ·xᵀ: a TN product with the bias along C's rows.
    GemmShape shape;
    shape.trans_a = CUBLAS_OP_T;
    shape.trans_b = CUBLAS_OP_N;
    shape.m = outputs;
    shape.n = rows;
    shape.k = inputs;
    shape.lda = inputs;
    shape.ldb = inputs;
    shape.ldc = outputs;
    shape.operand_type = CudaDataTypeOf(dtype);
    shape.output_type = CudaDataTypeOf(dtype);
    shape.align_a = PointerAlignment(weight.raw_data());
    shape.align_b = PointerAlignment(input.raw_data());
    shape.align_c = PointerAlignment(y.raw_data());
    const bool gelu = activation == Activation::kGeluTanh;
    shape.bias_type = CudaDataTypeOf(epilogue_bias.defined() ? epilogue_bias.dtype() : DType::kF32);
    if (bias != nullptr && linear_bias_ == LinearBias::kSeparate) {
      shape.epilogue = CUBLASLT_EPILOGUE_DEFAULT;  // bias and activation in the pass below
    } else if (bias != nullptr) {
      shape.epilogue = gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
    } else {
      shape.epilogue = gelu ? CUBLASLT_EPILOGUE_GELU : CUBLASLT_EPILOGUE_DEFAULT;
    }
    const float* bias_pointer = bias != nullptr ? bias32.data<float>() : nullptr;
    const void* epilogue_pointer =
        bias != nullptr && linear_bias_ != LinearBias::kSeparate ? epilogue_bias.raw_data() : nullptr;
    const bool fused = Gemm(shape, weight.raw_data(), input.raw_data(), y.raw_data(), epilogue_pointer);
    if (!fused || (bias != nullptr && linear_bias_ == LinearBias::kSeparate)) {
      // Separate bias, or no algorithm with this epilogue: plain product, then bias and activation in one pass.
      shape.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
      if (!fused) {
        ZCHECK_MSG(Gemm(shape, weight.raw_data(), input.raw_data(), y.raw_data(), nullptr),
                   "cuBLASLt has no algorithm for Linear x " << x.DebugString() << " weight " << weight.DebugString());
      }
      cuda::LaunchBiasActivation(y.raw_data(), ElementTypeOf(dtype), bias_pointer, rows, outputs,
                                 ActivationCodeOf(activation), stream_);
    } else if (activation == Activation::kSilu) {
      cuda::LaunchBiasActivation(y.raw_data(), ElementTypeOf(dtype), nullptr, rows, outputs,
                                 cuda::ActivationCode::kSilu, stream_);
    }
    return y;
  }

  Tensor Activate(const Tensor& x, Activation activation) override {
    CheckOnDevice(x, "Activate");
    CudaDeviceScope scope(device_index_);
    Tensor y = New(x.shape(), x.dtype());
    cuda::LaunchActivate(x.raw_data(), y.raw_data(), ElementTypeOf(x.dtype()), x.numel(), ActivationCodeOf(activation),
                         stream_);
    return y;
  }

  Tensor Combine(const std::vector<Term>& terms) override {
    ZCHECK(!terms.empty());
    const Shape& shape = terms[0].tensor->shape();
    CudaDeviceScope scope(device_index_);
    Tensor result = New(shape, DType::kF32);
    std::vector<cuda::CombineTerm> kernel_terms;
    for (const Term& term : terms) {
      ZCHECK_MSG(term.tensor->shape() == shape,
                 "Combine " << term.tensor->DebugString() << " vs " << ShapeToString(shape));
      CheckOnDevice(*term.tensor, "Combine");
      kernel_terms.push_back({term.tensor->raw_data(), ElementTypeOf(term.tensor->dtype()),
                              static_cast<float>(term.coefficient)});
    }
    for (size_t begin = 0; begin < kernel_terms.size(); begin += cuda::kMaxCombineTerms) {
      const int count = static_cast<int>(std::min<size_t>(cuda::kMaxCombineTerms, kernel_terms.size() - begin));
      cuda::LaunchCombine(kernel_terms.data() + begin, count, result.data<float>(), result.numel(),
                          /*accumulate=*/begin > 0, stream_);
    }
    return result;
  }

  void AddGated(const Tensor& x, const Tensor& y, const Tensor* gate) override {
    ZCHECK_MSG(x.dtype() == DType::kF32 && x.numel() == y.numel() && x.rank() >= 1,
               "AddGated x " << x.DebugString() << " y " << y.DebugString());
    CheckOnDevice(x, "AddGated");
    CheckOnDevice(y, "AddGated");
    CudaDeviceScope scope(device_index_);
    const int64_t width = x.dim(-1);
    const int64_t rows = width == 0 ? 0 : x.numel() / width;
    Tensor gate32;
    if (gate != nullptr) {
      ZCHECK_MSG(gate->numel() == width, "AddGated gate " << gate->DebugString() << " for width " << width);
      CheckOnDevice(*gate, "AddGated");
      gate32 = gate->dtype() == DType::kF32 ? *gate : CastOnDevice(*gate, DType::kF32);
    }
    cuda::LaunchAddGated(x.data<float>(), y.raw_data(), ElementTypeOf(y.dtype()),
                         gate != nullptr ? gate32.data<float>() : nullptr, rows, width, stream_);
  }

  // ---- normalisation ----
  Tensor LayerNorm(const Tensor& x, const NormParams& params, DType out_dtype) override {
    CheckOnDevice(x, "LayerNorm");
    CudaDeviceScope scope(device_index_);
    const int64_t width = x.dim(-1);
    const int64_t rows = width == 0 ? 0 : x.numel() / width;
    Tensor weight = OptionalF32(params.weight, width, "LayerNorm weight");
    Tensor bias = OptionalF32(params.bias, width, "LayerNorm bias");
    Tensor scale = OptionalF32(params.scale, width, "LayerNorm scale");
    Tensor shift = OptionalF32(params.shift, width, "LayerNorm shift");
    Tensor y = New(x.shape(), out_dtype);
    cuda::LaunchLayerNorm(x.raw_data(), ElementTypeOf(x.dtype()), y.raw_data(), ElementTypeOf(out_dtype), rows, width,
                          params.epsilon, DataOrNull(weight), DataOrNull(bias), DataOrNull(scale), DataOrNull(shift),
                          stream_);
    return y;
  }

  Tensor RmsNorm(const Tensor& x, const Tensor& weight, float epsilon) override {
    CheckOnDevice(x, "RmsNorm");
    CudaDeviceScope scope(device_index_);
    const int64_t width = x.dim(-1);
    const int64_t rows = width == 0 ? 0 : x.numel() / width;
    Tensor weight32 = OptionalF32(weight, width, "RmsNorm weight");
    ZCHECK(weight32.defined());
    Tensor y = New(x.shape(), x.dtype());
    cuda::LaunchRmsNorm(x.raw_data(), y.raw_data(), ElementTypeOf(x.dtype()), rows, width, weight32.data<float>(),
                        epsilon, stream_);
    return y;
  }

  // ---- attention and positions ----
  void ApplyRope(const Tensor& x, const Tensor& cos, const Tensor& sin) override {
    ZCHECK_MSG(x.rank() == 3 && x.dim(2) % 2 == 0, "ApplyRope x " << x.DebugString());
    const int64_t tokens = x.dim(0), heads = x.dim(1), head_dim = x.dim(2);
    ZCHECK_MSG(cos.rank() == 2 && cos.dim(0) == tokens && cos.dim(1) == head_dim / 2 && sin.shape() == cos.shape() &&
                   cos.dtype() == DType::kF32 && sin.dtype() == DType::kF32,
               "ApplyRope cos " << cos.DebugString() << " for x " << x.DebugString());
    CheckOnDevice(x, "ApplyRope");
    CheckOnDevice(cos, "ApplyRope");
    CheckOnDevice(sin, "ApplyRope");
    CudaDeviceScope scope(device_index_);
    cuda::LaunchRope(x.raw_data(), ElementTypeOf(x.dtype()), tokens, heads, head_dim, cos.data<float>(),
                     sin.data<float>(), stream_);
  }

  Tensor Attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                   const BlockSparseLayout* layout) override {
    ZCHECK_MSG(q.rank() == 3 && k.rank() == 3 && v.shape() == k.shape() && q.dim(1) == k.dim(1) && q.dim(2) == k.dim(2),
               "Attention q " << q.DebugString() << " k " << k.DebugString() << " v " << v.DebugString());
    if (!cuda::AttentionSupportsHeadDim(static_cast<int>(q.dim(2)))) {
      // The flash kernel is built for head dims 64 and 128 (the DiT and the text encoder). Other widths
      // (the VAE's single-head per-frame attention, d = 384, up to 65,536 positions at 2048²) run tiled.
      ZCHECK_MSG(layout == nullptr, "block-sparse attention needs head dim 64 or 128, got " << q.dim(2));
      return TiledAttention(q, k, v, scale);
    }
    ZCHECK(q.dim(0) <= 0x7fffffff && k.dim(0) <= 0x7fffffff);
    CheckOnDevice(q, "Attention");
    CheckOnDevice(k, "Attention");
    CheckOnDevice(v, "Attention");
    CudaDeviceScope scope(device_index_);
    const Tensor q16 = q.dtype() == DType::kBF16 ? q : CastOnDevice(q, DType::kBF16);
    const Tensor k16 = k.dtype() == DType::kBF16 ? k : CastOnDevice(k, DType::kBF16);
    const Tensor v16 = v.dtype() == DType::kBF16 ? v : CastOnDevice(v, DType::kBF16);
    Tensor out = New(q.shape(), DType::kBF16);
    cuda::AttentionArguments arguments;
    arguments.q = q16.raw_data();
    arguments.k = k16.raw_data();
    arguments.v = v16.raw_data();
    arguments.o = out.raw_data();
    const int64_t row_stride = q.dim(1) * q.dim(2);
    arguments.q_row_stride = arguments.k_row_stride = arguments.v_row_stride = arguments.o_row_stride = row_stride;
    arguments.query_count = static_cast<int>(q.dim(0));
    arguments.key_count = static_cast<int>(k.dim(0));
    arguments.heads = static_cast<int>(q.dim(1));
    arguments.head_dim = static_cast<int>(q.dim(2));
    arguments.scale = scale;
    if (layout != nullptr) {
      const int64_t query_blocks = (q.dim(0) + cuda::kAttentionQueryBlock - 1) / cuda::kAttentionQueryBlock;
      ZCHECK_MSG(layout->query_block == cuda::kAttentionQueryBlock &&
                     layout->key_block % cuda::kAttentionKeyTile == 0 && layout->key_block > 0,
                 "CUDA attention needs query_block " << cuda::kAttentionQueryBlock << " and key_block a multiple of "
                                                     << cuda::kAttentionKeyTile << ", got " << layout->query_block
                                                     << " x " << layout->key_block);
      const Tensor& offsets = layout->row_offsets;
      const Tensor& columns = layout->column_indices;
      ZCHECK_MSG(offsets.rank() == 2 && offsets.dtype() == DType::kI32 && offsets.dim(1) == query_blocks + 1 &&
                     (offsets.dim(0) == 1 || offsets.dim(0) == q.dim(1)) && columns.rank() == 2 &&
                     columns.dtype() == DType::kI32 && columns.dim(0) == offsets.dim(0),
                 "BlockSparseLayout row_offsets " << offsets.DebugString() << " column_indices "
                                                  << columns.DebugString() << " for " << query_blocks
                                                  << " query blocks");
      CheckOnDevice(offsets, "Attention layout");
      CheckOnDevice(columns, "Attention layout");
      arguments.row_offsets = offsets.data<int32_t>();
      arguments.column_indices = columns.data<int32_t>();
      arguments.layout_groups = static_cast<int>(offsets.dim(0));
      arguments.layout_row_length = static_cast<int>(offsets.dim(1));
      arguments.layout_max_entries = static_cast<int>(columns.dim(1));
      arguments.layout_key_block = layout->key_block;
    }
    arguments.implementation = attention_implementation_;
    cuda::LaunchAttention(arguments, stream_);
    return q.dtype() == DType::kBF16 ? out : CastOnDevice(out, q.dtype());
  }

  // ---- video VAE ----
  Tensor Conv3d(const Tensor& x, const Tensor& weight, const Tensor* bias, int pad_front, int pad_back,
                int pad_height, int pad_width) override {
    ZCHECK_MSG(x.rank() == 4 && weight.rank() == 5 && x.dtype() == DType::kF32 && weight.dtype() == DType::kF32 &&
                   weight.dim(1) == x.dim(1),
               "Conv3d x " << x.DebugString() << " weight " << weight.DebugString());
    ZCHECK_MSG(pad_front >= 0 && pad_back >= 0 && pad_height >= 0 && pad_width >= 0,
               "Conv3d padding " << pad_front << "/" << pad_back << "/" << pad_height << "/" << pad_width);
    CheckOnDevice(x, "Conv3d");
    CheckOnDevice(weight, "Conv3d");
    CudaDeviceScope scope(device_index_);
    cuda::ConvGeometry geometry;
    geometry.frames = x.dim(0);
    geometry.in_channels = x.dim(1);
    geometry.height = x.dim(2);
    geometry.width = x.dim(3);
    geometry.kernel_t = weight.dim(2);
    geometry.kernel_h = weight.dim(3);
    geometry.kernel_w = weight.dim(4);
    geometry.pad_front = pad_front;
    geometry.pad_height = pad_height;
    geometry.pad_width = pad_width;
    const int64_t out_channels = weight.dim(0);
    const int64_t out_frames = geometry.frames + pad_front + pad_back - geometry.kernel_t + 1;
    geometry.out_height = geometry.height + 2 * pad_height - geometry.kernel_h + 1;
    geometry.out_width = geometry.width + 2 * pad_width - geometry.kernel_w + 1;
    ZCHECK_MSG(out_frames >= 1 && geometry.out_height >= 1 && geometry.out_width >= 1,
               "Conv3d output would be empty: x " << x.DebugString() << " weight " << weight.DebugString());
    if (bias != nullptr) {
      ZCHECK_MSG(bias->dtype() == DType::kF32 && bias->numel() == out_channels, "Conv3d bias " << bias->DebugString());
      CheckOnDevice(*bias, "Conv3d");
    }
    Tensor y = New({out_frames, out_channels, geometry.out_height, geometry.out_width}, DType::kF32);
    if (cudnn_ != nullptr) {
      cuda::CudnnConvShape shape;
      shape.frames = out_frames;
      shape.in_frames = geometry.frames;
      shape.in_channels = geometry.in_channels;
      shape.height = geometry.height;
      shape.width = geometry.width;
      shape.out_channels = out_channels;
      shape.kernel_t = geometry.kernel_t;
      shape.kernel_h = geometry.kernel_h;
      shape.kernel_w = geometry.kernel_w;
      shape.pad_front = pad_front;
      shape.pad_height = pad_height;
      shape.pad_width = pad_width;
      Tensor tap_weight = New({cuda::CudnnConv3d::weight_tap_bytes(shape) / 4}, DType::kF32);
      Tensor workspace = New({cuda::CudnnConv3d::workspace_limit() / 4}, DType::kF32);
      cudnn_->Run(shape, x.data<float>(), weight.data<float>(), tap_weight.data<float>(), workspace.raw_data(),
                  y.data<float>());
      if (bias != nullptr) {
        cuda::LaunchAddChannelBias(y.data<float>(), bias->data<float>(), out_frames, out_channels, geometry.out_height * geometry.out_width,
                                   stream_);
      }
      return y;
    }
    const int64_t reduction = geometry.in_channels * geometry.kernel_t * geometry.kernel_h * geometry.kernel_w;
    const int64_t out_plane = geometry.out_height * geometry.out_width;
    const int64_t row_bytes = reduction * geometry.out_width *
                              static_cast<int64_t>(conv_precision_ == ConvPrecision::kBf16 ? 2 : sizeof(float));
    const int64_t rows_per_chunk =
        std::clamp<int64_t>(static_cast<int64_t>(kConvColumnBudgetBytes) / row_bytes, 1, geometry.out_height);
    // bf16: the im2col columns and the weight are rounded to bf16 (tensor cores, fp32 accumulation, F32
    // output), as PyTorch's bf16 autocast runs the reference VAE; tf32: F32 operands on TF32 tensor cores
    // (PyTorch's cuDNN default); fp32: a true fp32 product.
    const bool bf16 = conv_precision_ == ConvPrecision::kBf16;
    const DType operand_dtype = bf16 ? DType::kBF16 : DType::kF32;
    const Tensor weight_operand = bf16 ? CastOnDevice(weight, DType::kBF16) : weight;
    Tensor columns = New({reduction, rows_per_chunk * geometry.out_width}, operand_dtype);
    for (int64_t t = 0; t < out_frames; ++t) {
      for (int64_t row = 0; row < geometry.out_height; row += rows_per_chunk) {
        const int64_t rows = std::min(rows_per_chunk, geometry.out_height - row);
        const int64_t positions = rows * geometry.out_width;
        cuda::LaunchIm2Col(x.data<float>(), columns.raw_data(), ElementTypeOf(operand_dtype), geometry, t, row, rows,
                           stream_);
        // Y[o, position] = Σ_k W[o, k] · columns[k, position]; column-major C[position, o] = A[position, k]·B[k, o].
        float* output = y.data<float>() + (t * out_channels) * out_plane + row * geometry.out_width;
        GemmShape shape;
        shape.m = positions;
        shape.n = out_channels;
        shape.k = reduction;
        shape.lda = positions;
        shape.ldb = reduction;
        shape.ldc = out_plane;
        shape.operand_type = CudaDataTypeOf(operand_dtype);
        shape.compute = conv_precision_ == ConvPrecision::kTf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        shape.align_a = PointerAlignment(columns.raw_data());
        shape.align_b = PointerAlignment(weight_operand.raw_data());
        shape.align_c = PointerAlignment(output);
        ZCHECK_MSG(Gemm(shape, columns.raw_data(), weight_operand.raw_data(), output, nullptr),
                   "cuBLASLt has no algorithm for Conv3d x " << x.DebugString() << " weight " << weight.DebugString());
      }
    }
    if (bias != nullptr) {
      cuda::LaunchAddChannelBias(y.data<float>(), bias->data<float>(), out_frames, out_channels, out_plane, stream_);
    }
    return y;
  }

  Tensor ChannelRmsNorm(const Tensor& x, const Tensor& gamma, Activation activation) override {
    ZCHECK_MSG(x.rank() >= 2 && x.dtype() == DType::kF32 && gamma.dtype() == DType::kF32 && gamma.numel() == x.dim(1),
               "ChannelRmsNorm x " << x.DebugString() << " gamma " << gamma.DebugString());
    CheckOnDevice(x, "ChannelRmsNorm");
    CheckOnDevice(gamma, "ChannelRmsNorm");
    CudaDeviceScope scope(device_index_);
    const int64_t frames = x.dim(0), channels = x.dim(1);
    const int64_t positions = frames == 0 || channels == 0 ? 0 : x.numel() / (frames * channels);
    Tensor y = New(x.shape(), DType::kF32);
    cuda::LaunchChannelRmsNorm(x.data<float>(), y.data<float>(), gamma.data<float>(), frames, channels, positions,
                               ActivationCodeOf(activation), stream_);
    return y;
  }

  Tensor UpsampleNearest2x(const Tensor& x) override {
    ZCHECK_MSG(x.rank() == 4 && x.dtype() == DType::kF32, "UpsampleNearest2x x " << x.DebugString());
    CheckOnDevice(x, "UpsampleNearest2x");
    CudaDeviceScope scope(device_index_);
    Tensor y = New({x.dim(0), x.dim(1), 2 * x.dim(2), 2 * x.dim(3)}, DType::kF32);
    cuda::LaunchUpsampleNearest2x(x.data<float>(), y.data<float>(), x.dim(0) * x.dim(1), x.dim(2), x.dim(3), stream_);
    return y;
  }

  Tensor SwapAxes(const Tensor& x, int64_t batch, int64_t rows, int64_t columns, int64_t inner) override {
    ZCHECK_MSG(batch >= 0 && rows >= 0 && columns >= 0 && inner >= 0 && batch * rows * columns * inner == x.numel(),
               "SwapAxes " << x.DebugString() << " as [" << batch << ", " << rows << ", " << columns << ", " << inner
                           << "]");
    CheckOnDevice(x, "SwapAxes");
    CudaDeviceScope scope(device_index_);
    Tensor y = New({batch, columns, rows, inner}, x.dtype());
    cuda::LaunchSwapAxes(x.raw_data(), y.raw_data(), static_cast<int>(DTypeSize(x.dtype())), batch, rows, columns,
                         inner, stream_);
    return y;
  }

  Tensor Clamp(const Tensor& x, float minimum, float maximum) override {
    ZCHECK_MSG(x.dtype() == DType::kF32, "Clamp x " << x.DebugString());
    CheckOnDevice(x, "Clamp");
    CudaDeviceScope scope(device_index_);
    Tensor y = New(x.shape(), DType::kF32);
    cuda::LaunchClamp(x.data<float>(), y.data<float>(), x.numel(), minimum, maximum, stream_);
    return y;
  }

  // ---- text encoder ----
  Tensor GatherRows(const Tensor& table, const Tensor& ids, DType out_dtype) override {
    ZCHECK_MSG(table.rank() == 2 && ids.dtype() == DType::kI32 && ids.rank() == 1,
               "GatherRows table " << table.DebugString() << " ids " << ids.DebugString());
    CheckOnDevice(table, "GatherRows");
    CheckOnDevice(ids, "GatherRows");
    CudaDeviceScope scope(device_index_);
    Tensor out = New({ids.dim(0), table.dim(1)}, out_dtype);
    cuda::LaunchGatherRows(table.raw_data(), ElementTypeOf(table.dtype()), ids.data<int32_t>(), out.raw_data(),
                           ElementTypeOf(out_dtype), ids.dim(0), table.dim(1), stream_);
    return out;
  }

  Tensor AttentionWithBias(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                           float scale) override {
    ZCHECK_MSG(q.rank() == 3 && k.rank() == 3 && v.shape() == k.shape() && q.dim(1) == k.dim(1) &&
                   q.dim(2) == k.dim(2) && k.dtype() == q.dtype() && v.dtype() == q.dtype() &&
                   bias.dtype() == DType::kF32 && bias.shape() == Shape({q.dim(1), q.dim(0), k.dim(0)}),
               "AttentionWithBias q " << q.DebugString() << " k " << k.DebugString() << " v " << v.DebugString()
                                      << " bias " << bias.DebugString());
    CheckOnDevice(q, "AttentionWithBias");
    CheckOnDevice(k, "AttentionWithBias");
    CheckOnDevice(v, "AttentionWithBias");
    CheckOnDevice(bias, "AttentionWithBias");
    CudaDeviceScope scope(device_index_);
    Tensor out = New(q.shape(), q.dtype());
    cuda::LaunchAttentionWithBias(q.raw_data(), k.raw_data(), v.raw_data(), bias.data<float>(), out.raw_data(),
                                  ElementTypeOf(q.dtype()), q.dim(0), k.dim(0), q.dim(1), q.dim(2), scale, stream_);
    return out;
  }

  Tensor Multiply(const Tensor& a, const Tensor& b) override {
    ZCHECK_MSG(a.shape() == b.shape(), "Multiply " << a.DebugString() << " by " << b.DebugString());
    CheckOnDevice(a, "Multiply");
    CheckOnDevice(b, "Multiply");
    CudaDeviceScope scope(device_index_);
    Tensor out = New(a.shape(), a.dtype());
    cuda::LaunchMultiply(a.raw_data(), ElementTypeOf(a.dtype()), b.raw_data(), ElementTypeOf(b.dtype()),
                         out.raw_data(), a.numel(), stream_);
    return out;
  }

  // ---- layout ----
  Tensor Patchify(const Tensor& latent, int patch_t, int patch_h, int patch_w) override {
    ZCHECK_MSG(latent.rank() == 4, "Patchify " << latent.DebugString());
    const int64_t channels = latent.dim(0), frames = latent.dim(1), height = latent.dim(2), width = latent.dim(3);
    ZCHECK(frames % patch_t == 0 && height % patch_h == 0 && width % patch_w == 0);
    CheckOnDevice(latent, "Patchify");
    CudaDeviceScope scope(device_index_);
    const int64_t tokens = (frames / patch_t) * (height / patch_h) * (width / patch_w);
    Tensor out = New({tokens, channels * patch_t * patch_h * patch_w}, DType::kF32);
    cuda::LaunchPatchify(latent.raw_data(), ElementTypeOf(latent.dtype()), out.data<float>(), channels, frames, height,
                         width, patch_t, patch_h, patch_w, stream_);
    return out;
  }

  Tensor Unpatchify(const Tensor& tokens, int channels, int grid_f, int grid_h, int grid_w, int patch_t, int patch_h,
                    int patch_w) override {
    const int64_t columns = static_cast<int64_t>(channels) * patch_t * patch_h * patch_w;
    ZCHECK_MSG(tokens.rank() == 2 && tokens.dim(0) == int64_t{grid_f} * grid_h * grid_w && tokens.dim(1) == columns,
               "Unpatchify " << tokens.DebugString());
    CheckOnDevice(tokens, "Unpatchify");
    CudaDeviceScope scope(device_index_);
    Tensor latent = New({channels, int64_t{grid_f} * patch_t, int64_t{grid_h} * patch_h, int64_t{grid_w} * patch_w},
                        DType::kF32);
    cuda::LaunchUnpatchify(tokens.raw_data(), ElementTypeOf(tokens.dtype()), latent.data<float>(), channels, grid_f,
                           grid_h, grid_w, patch_t, patch_h, patch_w, stream_);
    return latent;
  }

 private:
  // o = softmax(scale · q kᵀ) v per head, one tile of query rows at a time: S = q_tile · kᵀ (fp32
  // product), row softmax in place, o_tile = S · v. Memory is one F32 [tile, Lk] score buffer (bounded by
  // kAttentionScoreBudgetBytes), never [Lq, Lk]. Computed in F32 whatever the inputs' dtype.
  Tensor TiledAttention(const Tensor& q, const Tensor& k, const Tensor& v, float scale) {
    CheckOnDevice(q, "Attention");
    CheckOnDevice(k, "Attention");
    CheckOnDevice(v, "Attention");
    CudaDeviceScope scope(device_index_);
    const Tensor q32 = q.dtype() == DType::kF32 ? q : CastOnDevice(q, DType::kF32);
    const Tensor k32 = k.dtype() == DType::kF32 ? k : CastOnDevice(k, DType::kF32);
    const Tensor v32 = v.dtype() == DType::kF32 ? v : CastOnDevice(v, DType::kF32);
    const int64_t queries = q.dim(0), keys = k.dim(0), heads = q.dim(1), head_dim = q.dim(2);
    const int64_t stride = heads * head_dim;
    Tensor out = New(q.shape(), DType::kF32);
    if (queries == 0) return q.dtype() == DType::kF32 ? out : CastOnDevice(out, q.dtype());
    const int64_t key_bytes = std::max<int64_t>(1, keys) * static_cast<int64_t>(sizeof(float));
    const int64_t tile =
        std::clamp<int64_t>(static_cast<int64_t>(kAttentionScoreBudgetBytes) / key_bytes, 1, queries);
    Tensor scores = New({tile, std::max<int64_t>(1, keys)}, DType::kF32);
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t row0 = 0; row0 < queries; row0 += tile) {
        const int64_t rows = std::min(tile, queries - row0);
        const float* q_tile = q32.data<float>() + row0 * stride + h * head_dim;
        const float* k_head = k32.data<float>() + h * head_dim;
        const float* v_head = v32.data<float>() + h * head_dim;
        float* o_tile = out.data<float>() + row0 * stride + h * head_dim;
        if (keys == 0) {
          ZCUDA_CHECK(cudaMemset2DAsync(o_tile, stride * sizeof(float), 0, head_dim * sizeof(float), rows, stream_));
          continue;
        }
        // Column-major: Sᵀ[keys, rows] = K[keys, d] · Q_tileᵀ[d, rows] (row-major S[rows, keys]).
        GemmShape logits;
        logits.trans_a = CUBLAS_OP_T;
        logits.m = keys;
        logits.n = rows;
        logits.k = head_dim;
        logits.lda = stride;
        logits.ldb = stride;
        logits.ldc = keys;
        logits.align_a = PointerAlignment(k_head);
        logits.align_b = PointerAlignment(q_tile);
        logits.align_c = PointerAlignment(scores.raw_data());
        ZCHECK_MSG(Gemm(logits, k_head, q_tile, scores.raw_data(), nullptr), "cuBLASLt has no algorithm for q·kᵀ");
        cuda::LaunchSoftmaxRows(scores.data<float>(), rows, keys, scale, stream_);
        // Column-major: O_tileᵀ[d, rows] = Vᵀ[d, keys] · Sᵀ[keys, rows].
        GemmShape weighted;
        weighted.m = head_dim;
        weighted.n = rows;
        weighted.k = keys;
        weighted.lda = stride;
        weighted.ldb = keys;
        weighted.ldc = stride;
        weighted.align_a = PointerAlignment(v_head);
        weighted.align_b = PointerAlignment(scores.raw_data());
        weighted.align_c = PointerAlignment(o_tile);
        ZCHECK_MSG(Gemm(weighted, v_head, scores.raw_data(), o_tile, nullptr), "cuBLASLt has no algorithm for p·v");
      }
    }
    return q.dtype() == DType::kF32 ? out : CastOnDevice(out, q.dtype());
  }

  Tensor New(const Shape& shape, DType dtype) {
    const size_t bytes = static_cast<size_t>(NumElements(shape)) * DTypeSize(dtype);
    return Tensor(allocator_->Allocate(bytes), 0, shape, dtype);
  }

  void CheckOnDevice(const Tensor& tensor, const char* operation) const {
    ZCHECK_MSG(tensor.defined() && tensor.device() == Device::Cuda(device_index_),
               operation << ": " << tensor.DebugString() << " is not on cuda:" << device_index_);
  }

  Tensor CastOnDevice(const Tensor& tensor, DType dtype) {
    Tensor out = New(tensor.shape(), dtype);
    if (tensor.dtype() == dtype) {
      if (tensor.nbytes() > 0) {
        ZCUDA_CHECK(cudaMemcpyAsync(out.raw_data(), tensor.raw_data(), tensor.nbytes(), cudaMemcpyDeviceToDevice,
                                    stream_));
      }
      return out;
    }
    cuda::LaunchCast(tensor.raw_data(), ElementTypeOf(tensor.dtype()), out.raw_data(), ElementTypeOf(dtype),
                     tensor.numel(), stream_);
    return out;
  }

  // An optional F32 [width] parameter on this device (converted when stored in another float dtype).
  Tensor OptionalF32(const Tensor& parameter, int64_t width, const char* what) {
    if (!parameter.defined()) return Tensor();
    ZCHECK_MSG(parameter.numel() == width, what << " " << parameter.DebugString() << " for width " << width);
    CheckOnDevice(parameter, what);
    return parameter.dtype() == DType::kF32 ? parameter : CastOnDevice(parameter, DType::kF32);
  }
  static const float* DataOrNull(const Tensor& tensor) { return tensor.defined() ? tensor.data<float>() : nullptr; }

  void CopyHostToDevice(void* destination, const void* source, size_t bytes) {
    if (bytes == 0) return;
    if (bytes <= kSmallUploadBytes) {
      for (size_t offset = 0; offset < bytes; offset += cuda::kParameterPayloadBytes) {
        const size_t chunk = std::min(cuda::kParameterPayloadBytes, bytes - offset);
        cuda::LaunchWriteBytes(static_cast<char*>(destination) + offset, static_cast<const char*>(source) + offset,
                               chunk, stream_);
      }
      return;
    }
    // Pageable memory: the call returns once the source has been staged, so the caller may free it.
    ZCUDA_CHECK(cudaMemcpyAsync(destination, source, bytes, cudaMemcpyHostToDevice, stream_));
  }

  // Runs C = op(A)·op(B) (+ epilogue) with a cached plan; false when cuBLASLt has no algorithm.
  bool Gemm(GemmShape shape, const void* a, const void* b, void* c, const void* bias) {
    if (bias == nullptr && HasBias(shape.epilogue)) {
      shape.epilogue = shape.epilogue == CUBLASLT_EPILOGUE_GELU_BIAS ? CUBLASLT_EPILOGUE_GELU : CUBLASLT_EPILOGUE_DEFAULT;
    }
    GemmPlan& plan = PlanFor(shape, a, b, c, bias);
    if (!plan.usable) return false;
    if (HasBias(shape.epilogue)) {
      ZCUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.operation, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                   sizeof(bias)));
    }
    const float alpha = 1.0f, beta = 0.0f;
    ZCUBLAS_CHECK(cublasLtMatmul(cublas_, plan.operation, &alpha, a, plan.a, b, plan.b, &beta, c, plan.c, c, plan.c,
                                 &plan.algorithm, workspace_->data, kGemmWorkspaceBytes, stream_));
    return true;
  }

  GemmPlan& PlanFor(const GemmShape& shape, const void* a, const void* b, void* c, const void* bias) {
    auto found = plans_.find(shape);
    if (found != plans_.end()) return found->second;
    GemmPlan plan;
    // fp32 accumulation always; for F32 operands this is a true fp32 product (no TF32).
    ZCUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.operation, shape.compute, CUDA_R_32F));
    ZCUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.operation, CUBLASLT_MATMUL_DESC_TRANSA, &shape.trans_a,
                                                 sizeof(shape.trans_a)));
    ZCUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.operation, CUBLASLT_MATMUL_DESC_TRANSB, &shape.trans_b,
                                                 sizeof(shape.trans_b)));
    ZCUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.operation, CUBLASLT_MATMUL_DESC_EPILOGUE, &shape.epilogue,
                                                 sizeof(shape.epilogue)));
    if (HasBias(shape.epilogue)) {
      ZCUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.operation, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                   &shape.bias_type, sizeof(shape.bias_type)));
    }
    const bool a_transposed = shape.trans_a == CUBLAS_OP_T, b_transposed = shape.trans_b == CUBLAS_OP_T;
    ZCUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.a, shape.operand_type, a_transposed ? shape.k : shape.m,
                                             a_transposed ? shape.m : shape.k, shape.lda));
    ZCUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.b, shape.operand_type, b_transposed ? shape.n : shape.k,
                                             b_transposed ? shape.k : shape.n, shape.ldb));
    ZCUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.c, shape.output_type, shape.m, shape.n, shape.ldc));

    cublasLtMatmulPreference_t preference = nullptr;
    ZCUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
    const uint64_t workspace_bytes = kGemmWorkspaceBytes;
    ZCUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                       &workspace_bytes, sizeof(workspace_bytes)));
    const uint32_t align_a = shape.align_a, align_b = shape.align_b, align_c = shape.align_c;
    ZCUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                       &align_a, sizeof(align_a)));
    ZCUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                       &align_b, sizeof(align_b)));
    ZCUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                       &align_c, sizeof(align_c)));
    ZCUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                       &align_c, sizeof(align_c)));
    cublasLtMatmulHeuristicResult_t results[kGemmCandidates] = {};
    int found_count = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(cublas_, plan.operation, plan.a, plan.b, plan.c, plan.c,
                                                                 preference, kGemmCandidates, results, &found_count);
    cublasLtMatmulPreferenceDestroy(preference);
    plan.usable = status == CUBLAS_STATUS_SUCCESS && found_count > 0;
    if (plan.usable) {
      plan.algorithm = results[0].algo;
      // Large products: time the candidates once on the real operands and keep the fastest (on the 1.3B
      // DiT the heuristic's first choice already was the fastest within noise; this guards other shapes).
      // The output is overwritten by the call that follows, so running candidates into it is harmless.
      const double multiply_adds = static_cast<double>(shape.m) * static_cast<double>(shape.n) * static_cast<double>(shape.k);
      if (found_count > 1 && multiply_adds >= kGemmAutotuneMultiplyAdds) {
        plan.algorithm = FastestAlgorithm(plan, results, found_count, shape.epilogue, a, b, c, bias);
      }
    }
    return plans_.emplace(shape, plan).first->second;
  }

  cublasLtMatmulAlgo_t FastestAlgorithm(GemmPlan& plan, const cublasLtMatmulHeuristicResult_t* results, int count,
                                        cublasLtEpilogue_t epilogue, const void* a, const void* b, void* c,
                                        const void* bias) {
    if (HasBias(epilogue)) {
      ZCUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.operation, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                   sizeof(bias)));
    }
    cudaEvent_t start, stop;
    ZCUDA_CHECK(cudaEventCreate(&start));
    ZCUDA_CHECK(cudaEventCreate(&stop));
    const float alpha = 1.0f, beta = 0.0f;
    float best_milliseconds = 0.0f;
    int best = -1;
    for (int i = 0; i < count; ++i) {
      auto run = [&] {
        return cublasLtMatmul(cublas_, plan.operation, &alpha, a, plan.a, b, plan.b, &beta, c, plan.c, c, plan.c,
                              &results[i].algo, workspace_->data, kGemmWorkspaceBytes, stream_);
      };
      if (run() != CUBLAS_STATUS_SUCCESS) continue;  // warm-up; a candidate that cannot run is skipped
      ZCUDA_CHECK(cudaEventRecord(start, stream_));
      for (int repeat = 0; repeat < 3; ++repeat) ZCUBLAS_CHECK(run());
      ZCUDA_CHECK(cudaEventRecord(stop, stream_));
      ZCUDA_CHECK(cudaEventSynchronize(stop));
      float milliseconds = 0.0f;
      ZCUDA_CHECK(cudaEventElapsedTime(&milliseconds, start, stop));
      if (best < 0 || milliseconds < best_milliseconds) {
        best_milliseconds = milliseconds;
        best = i;
      }
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return results[best < 0 ? 0 : best].algo;
  }

  const int device_index_;
  cudaStream_t stream_;
  cublasLtHandle_t cublas_;
  const cuda::AttentionImplementation attention_implementation_;
  const ConvPrecision conv_precision_;
  std::unique_ptr<cuda::CudnnConv3d> cudnn_;  // set when conv_algorithm is cudnn
  const LinearBias linear_bias_;
  std::shared_ptr<CudaAllocator> allocator_;
  std::shared_ptr<Storage> workspace_;
  std::map<GemmShape, GemmPlan> plans_;
};

}  // namespace

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

CudaBackendOptions CudaBackendOptionsFromEnvironment() {
  CudaBackendOptions options;
  if (const char* value = std::getenv("ZOETROPE_ATTENTION_KERNEL"); value != nullptr && *value != '\0') {
    options.attention_kernel = value;
  }
  if (const char* value = std::getenv("ZOETROPE_LINEAR_BIAS"); value != nullptr && *value != '\0') {
    options.linear_bias = value;
  }
  if (const char* value = std::getenv("ZOETROPE_CONV_PRECISION"); value != nullptr && *value != '\0') {
    options.conv_precision = value;
  }
  if (const char* value = std::getenv("ZOETROPE_CONV_ALGORITHM"); value != nullptr && *value != '\0') {
    options.conv_algorithm = value;
  }
  return options;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int device_index, const CudaBackendOptions& options) {
  cuda::AttentionImplementation attention_implementation = cuda::AttentionImplementation::kAuto;
  if (!cuda::ParseAttentionImplementation(options.attention_kernel.c_str(), &attention_implementation)) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention_kernel (ZOETROPE_ATTENTION_KERNEL) must be auto, mma, wgmma3 or pingpong, got '",
                     options.attention_kernel, "'"));
  }
  absl::StatusOr<LinearBias> linear_bias = ParseLinearBias(options.linear_bias);
  if (!linear_bias.ok()) return linear_bias.status();
  absl::StatusOr<ConvPrecision> conv_precision = ParseConvPrecision(options.conv_precision);
  if (!conv_precision.ok()) return conv_precision.status();
  if (options.conv_algorithm != "im2col" && options.conv_algorithm != "cudnn") {
    return absl::InvalidArgumentError(absl::StrCat(
        "conv_algorithm (ZOETROPE_CONV_ALGORITHM) must be im2col or cudnn, got '", options.conv_algorithm, "'"));
  }
  const bool cudnn_conv = options.conv_algorithm == "cudnn";
  if (cudnn_conv && *conv_precision == ConvPrecision::kBf16) {
    return absl::InvalidArgumentError(
        "conv_algorithm cudnn runs tf32 or fp32 (ZOETROPE_CONV_PRECISION), not bf16: cuDNN's bf16 convolutions "
        "write bf16 outputs, and the VAE's activations stay F32");
  }
  if (cudnn_conv && !cuda::BuiltWithCudnn()) {
    return absl::InvalidArgumentError("conv_algorithm cudnn: this build has no cuDNN");
  }
  const int count = CudaDeviceCount();
  if (device_index < 0 || device_index >= count) {
    return absl::NotFoundError(absl::StrCat("CUDA device ", device_index, " does not exist (", count,
                                            count == 1 ? " device" : " devices", " visible)"));
  }
  cudaDeviceProp properties{};
  if (cudaError_t error = cudaGetDeviceProperties(&properties, device_index); error != cudaSuccess) {
    return absl::InternalError(
        absl::StrCat("cudaGetDeviceProperties(", device_index, "): ", cudaGetErrorString(error)));
  }
  if (properties.major != 9) {
    return absl::FailedPreconditionError(absl::StrCat("CUDA device ", device_index, " (", properties.name,
                                                      ") has compute capability ", properties.major, ".",
                                                      properties.minor, "; this build has code for sm_90a only"));
  }
  int previous = 0;
  cudaGetDevice(&previous);
  cudaSetDevice(device_index);
  cudaStream_t stream = nullptr;
  cudaError_t error = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  if (error != cudaSuccess) {
    cudaSetDevice(previous);
    return absl::InternalError(
        absl::StrCat("cudaStreamCreate on device ", device_index, ": ", cudaGetErrorString(error)));
  }
  cublasLtHandle_t cublas = nullptr;
  if (cublasStatus_t status = cublasLtCreate(&cublas); status != CUBLAS_STATUS_SUCCESS) {
    cudaStreamDestroy(stream);
    cudaSetDevice(previous);
    return absl::InternalError(absl::StrCat("cublasLtCreate: ", cublasLtGetStatusString(status)));
  }
  auto backend = std::make_unique<CudaBackend>(device_index, stream, cublas, attention_implementation, *linear_bias,
                                              *conv_precision);
  if (cudnn_conv) {
    absl::StatusOr<std::unique_ptr<cuda::CudnnConv3d>> cudnn =
        cuda::CudnnConv3d::Create(stream, *conv_precision == ConvPrecision::kTf32);
    if (!cudnn.ok()) {
      cudaSetDevice(previous);
      return cudnn.status();
    }
    backend->UseCudnnConvolutions(*std::move(cudnn));
  }
  cudaSetDevice(previous);
  return backend;
}

CudaMemoryStats CudaBackendMemoryStats(Backend& backend) {
  auto* cuda_backend = dynamic_cast<CudaBackend*>(&backend);
  ZCHECK_MSG(cuda_backend != nullptr, "CudaBackendMemoryStats of a non-CUDA backend " << backend.name());
  return cuda_backend->memory_stats();
}

namespace {
CudaBackend& AsCudaBackend(Backend& backend, const char* caller) {
  auto* cuda_backend = dynamic_cast<CudaBackend*>(&backend);
  ZCHECK_MSG(cuda_backend != nullptr, caller << " of a non-CUDA backend " << backend.name());
  return *cuda_backend;
}
}  // namespace

bool IsCudaBackend(Backend& backend) { return dynamic_cast<CudaBackend*>(&backend) != nullptr; }

CUstream_st* CudaBackendStream(Backend& backend) { return AsCudaBackend(backend, "CudaBackendStream").stream(); }

bool CudaBackendRecordStreamUse(Backend& backend, const Tensor& tensor, CUstream_st* stream) {
  return AsCudaBackend(backend, "CudaBackendRecordStreamUse").RecordStreamUse(tensor, stream);
}

}  // namespace zoetrope
