// Tensor handles, views and the scalar dtype conversions.
#include "kernels/tensor.h"

#include <cmath>
#include <cstring>

#include <gtest/gtest.h>

namespace zoetrope {
namespace {

TEST(DType, BFloat16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even mantissa (1.0).
  EXPECT_EQ(FloatToBFloat16(1.00390625f), 0x3f80);
  // 1 + 3·2^-8 is halfway between 1+2^-7 (odd) and 1+2^-6 (even).
  EXPECT_EQ(FloatToBFloat16(1.01171875f), 0x3f82);
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(std::nanf("")))));
  EXPECT_EQ(BFloat16ToFloat(FloatToBFloat16(-2.5f)), -2.5f);
}

TEST(DType, HalfRoundTripsEveryHalfValue) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float value = HalfToFloat(static_cast<uint16_t>(bits));
    const uint16_t back = FloatToHalf(value);
    if (std::isnan(value)) {
      EXPECT_TRUE(std::isnan(HalfToFloat(back))) << bits;
    } else {
      EXPECT_EQ(back, bits) << "half bits " << bits << " value " << value;
    }
  }
}

TEST(DType, HalfRoundsToNearest) {
  EXPECT_EQ(HalfToFloat(FloatToHalf(65504.0f)), 65504.0f);
  EXPECT_TRUE(std::isinf(HalfToFloat(FloatToHalf(70000.0f))));
  EXPECT_EQ(HalfToFloat(FloatToHalf(1e-8f)), 0.0f);
  // Smallest subnormal is 2^-24; 1.5·2^-24 is a tie and rounds to the even neighbour 2·2^-24.
  EXPECT_EQ(HalfToFloat(FloatToHalf(std::ldexp(1.5f, -24))), std::ldexp(2.0f, -24));
  EXPECT_NEAR(HalfToFloat(FloatToHalf(0.1f)), 0.1f, 1e-4f);
}

TEST(DType, NamesRoundTrip) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16, DType::kI64, DType::kI32}) {
    absl::StatusOr<DType> parsed = DTypeFromName(DTypeName(dtype));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, dtype);
  }
  absl::StatusOr<DType> bad = DTypeFromName("F64");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("F64"), std::string::npos);
}

TEST(Tensor, ViewsShareStorage) {
  Tensor tensor = Tensor::Host({4, 3}, DType::kF32);
  for (int i = 0; i < 12; ++i) tensor.data<float>()[i] = static_cast<float>(i);
  Tensor rows = tensor.Rows(1, 2);
  EXPECT_EQ(rows.shape(), (Shape{2, 3}));
  EXPECT_EQ(rows.data<float>()[0], 3.0f);
  rows.data<float>()[0] = 100.0f;
  EXPECT_EQ(tensor.data<float>()[3], 100.0f);
  Tensor viewed = tensor.View({2, -1, 2});
  EXPECT_EQ(viewed.shape(), (Shape{2, 3, 2}));
  EXPECT_EQ(viewed.dim(-1), 2);
  EXPECT_EQ(viewed.numel(), 12);
}

TEST(Tensor, ConversionsPreserveValues) {
  std::vector<float> values = {0.5f, -1.25f, 3.0f, 1024.0f};
  Tensor bf16 = HostTensorFromFloats(values, {2, 2}, DType::kBF16);
  EXPECT_EQ(bf16.dtype(), DType::kBF16);
  EXPECT_EQ(bf16.nbytes(), 8u);
  EXPECT_EQ(ToFloatVector(bf16), values);  // all exactly representable
  Tensor f16 = ConvertHost(bf16, DType::kF16);
  EXPECT_EQ(ToFloatVector(f16), values);
}

TEST(Tensor, WrapHostKeepsOwnerAlive) {
  auto owner = std::make_shared<std::vector<float>>(6, 2.0f);
  std::weak_ptr<std::vector<float>> watch = owner;
  Tensor wrapped = Tensor::WrapHost(owner->data(), {2, 3}, DType::kF32, owner);
  owner.reset();
  EXPECT_FALSE(watch.expired());
  Tensor view = wrapped.Rows(1, 1);
  wrapped = Tensor();
  EXPECT_FALSE(watch.expired());
  EXPECT_EQ(view.data<float>()[0], 2.0f);
  view = Tensor();
  EXPECT_TRUE(watch.expired());
}

}  // namespace
}  // namespace zoetrope
