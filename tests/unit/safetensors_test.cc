#include "worker/engine/safetensors.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace zoetrope {
namespace {

namespace fs = std::filesystem;

// Failure output shows the whole message, so a wrong message is diagnosable from the CI log alone.
#define EXPECT_MESSAGE_CONTAINS(status, text)                                                      \
  do {                                                                                             \
    const std::string zoetrope_message(std::string((status).message()));                           \
    EXPECT_NE(zoetrope_message.find(text), std::string::npos)                                      \
        << "message \"" << zoetrope_message << "\" lacks \"" << (text) << "\"";                    \
  } while (0)

std::string LittleEndian64(uint64_t value) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(value >> (8 * i));
  return bytes;
}

uint64_t ReadLittleEndian64(const std::string& bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | static_cast<unsigned char>(bytes[i]);
  return value;
}

// A safetensors file from a literal header and data section (no padding, so the header is exactly `header`).
std::string MakeFileBytes(const std::string& header, const std::string& data) {
  return LittleEndian64(header.size()) + header + data;
}

std::string TensorBytes(const Tensor& tensor) {
  return std::string(static_cast<const char*>(tensor.raw_data()), tensor.nbytes());
}

// Deterministic, distinct bytes per tensor so a mix-up of two tensors' ranges shows.
Tensor Patterned(const Shape& shape, DType dtype, int seed) {
  Tensor tensor = Tensor::Host(shape, dtype);
  auto* bytes = static_cast<unsigned char*>(tensor.raw_data());
  for (size_t i = 0; i < tensor.nbytes(); ++i) bytes[i] = static_cast<unsigned char>(seed * 37 + i * 11 + 1);
  return tensor;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::path(::testing::TempDir()) / "safetensors_test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << pattern;
    directory_ = pattern;
  }
  void TearDown() override {
    std::error_code error;
    fs::remove_all(directory_, error);
  }

  std::string PathOf(const std::string& name) const { return (fs::path(directory_) / name).string(); }

  std::string WriteFile(const std::string& name, const std::string& bytes) const {
    const std::string path = PathOf(name);
    std::ofstream stream(path, std::ios::binary | std::ios::trunc);
    stream.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    stream.close();
    EXPECT_TRUE(stream.good()) << path;
    return path;
  }

  static std::string ReadFile(const std::string& path) {
    std::ifstream stream(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(stream), std::istreambuf_iterator<char>());
  }

  std::vector<std::string> DirectoryEntries(const std::string& directory) const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(directory)) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  std::string directory_;
};

// ---------------------------------------------------------------------------------------------------
// Round trips

TEST_F(SafetensorsTest, RoundTripsEveryDtypeIncludingScalarsAndEmptyTensors) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  int seed = 0;
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16, DType::kI64, DType::kI32}) {
    const std::string name(DTypeName(dtype));
    tensors.emplace_back(name + ".matrix", Patterned({3, 5}, dtype, ++seed));
    tensors.emplace_back(name + ".cube", Patterned({2, 1, 3}, dtype, ++seed));
    tensors.emplace_back(name + ".scalar", Patterned({}, dtype, ++seed));
    tensors.emplace_back(name + ".empty_rows", Patterned({0, 4}, dtype, ++seed));
    tensors.emplace_back(name + ".empty_columns", Patterned({2, 0}, dtype, ++seed));
  }
  // Values that only survive if element widths are right.
  Tensor wide = Tensor::Host({3}, DType::kI64);
  wide.data<int64_t>()[0] = int64_t{1} << 40;
  wide.data<int64_t>()[1] = -7;
  wide.data<int64_t>()[2] = std::numeric_limits<int64_t>::min();
  tensors.emplace_back("wide_integers", wide);
  tensors.emplace_back("floats", HostTensorFromFloats({1.5f, -2.0f, 3.25f, 0.0f}, {2, 2}));

  const std::string path = PathOf("round_trip.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors).ok());

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->path(), path);
  EXPECT_TRUE((*file)->metadata().empty());

  std::vector<std::string> expected_keys;
  for (const auto& [name, tensor] : tensors) expected_keys.push_back(name);
  std::sort(expected_keys.begin(), expected_keys.end());
  EXPECT_EQ((*file)->Keys(), expected_keys);

  size_t total_bytes = 0;
  for (const auto& [name, original] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE((*file)->Contains(name));
    absl::StatusOr<TensorInfo> info = (*file)->Info(name);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->dtype, original.dtype());
    EXPECT_EQ(info->shape, original.shape());
    EXPECT_EQ(info->end - info->begin, original.nbytes());
    total_bytes += original.nbytes();

    absl::StatusOr<Tensor> loaded = (*file)->Get(name);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->dtype(), original.dtype());
    EXPECT_EQ(loaded->shape(), original.shape());
    EXPECT_TRUE(loaded->device().is_cpu());
    EXPECT_EQ(TensorBytes(*loaded), TensorBytes(original));
  }
  // 0-d tensors hold one element, zero-size ones none.
  EXPECT_EQ((*file)->Get("F32.scalar")->numel(), 1);
  EXPECT_EQ((*file)->Get("BF16.scalar")->nbytes(), 2u);
  EXPECT_EQ((*file)->Get("I64.empty_rows")->numel(), 0);
  EXPECT_EQ((*file)->Get("wide_integers")->data<int64_t>()[0], int64_t{1} << 40);
  EXPECT_EQ((*file)->Get("wide_integers")->data<int64_t>()[2], std::numeric_limits<int64_t>::min());
  EXPECT_EQ(ToFloatVector(*(*file)->Get("floats")), (std::vector<float>{1.5f, -2.0f, 3.25f, 0.0f}));

  // The data section holds exactly the tensors: nothing lost, nothing padded.
  const std::string bytes = ReadFile(path);
  const uint64_t header_length = ReadLittleEndian64(bytes);
  EXPECT_EQ(bytes.size(), 8 + header_length + total_bytes);
}

TEST_F(SafetensorsTest, TensorsKeepTheMappingAlive) {
  const std::string path = PathOf("keep_alive.safetensors");
  Tensor original = Patterned({64, 3}, DType::kF32, 9);
  ASSERT_TRUE(WriteSafetensors(path, {{"weight", original}}).ok());
  Tensor loaded;
  {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    loaded = *(*file)->Get("weight");
  }
  // The file object is gone; the view must still read the mapped bytes (a use after munmap would fault).
  ASSERT_EQ(::unlink(path.c_str()), 0);
  EXPECT_EQ(TensorBytes(loaded), TensorBytes(original));
  Tensor row = loaded.Rows(10, 2);
  EXPECT_EQ(TensorBytes(row), TensorBytes(original.Rows(10, 2)));
}

TEST_F(SafetensorsTest, MetadataRoundTrips) {
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"note", "quotes \" and backslash \\ and unicode \xE2\x9C\x93"}, {"empty", ""}};
  const std::string path = PathOf("metadata.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"x", Patterned({2}, DType::kF16, 1)}}, metadata).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata(), metadata);

  // Metadata alone, no tensors, is a valid file.
  const std::string metadata_only = PathOf("metadata_only.safetensors");
  ASSERT_TRUE(WriteSafetensors(metadata_only, {}, {{"only", "metadata"}}).ok());
  file = SafetensorsFile::Open(metadata_only);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->Keys().empty());
  EXPECT_EQ((*file)->metadata().at("only"), "metadata");
}

TEST_F(SafetensorsTest, WriterKeepsDeclaredOrderAndPadsTheHeader) {
  const std::string path = PathOf("ordered.safetensors");
  Tensor zeta = Patterned({3}, DType::kF32, 1);
  Tensor alpha = Patterned({6}, DType::kBF16, 2);
  Tensor middle = Patterned({1, 1}, DType::kI64, 3);
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer = SafetensorsWriter::Create(
      path, {{"zeta", DType::kF32, {3}}, {"alpha", DType::kBF16, {6}}, {"middle", DType::kI64, {1, 1}}},
      {{"source", "test"}});
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Write("zeta", zeta).ok());
  ASSERT_TRUE((*writer)->Write("alpha", alpha).ok());
  EXPECT_FALSE(fs::exists(path)) << "the file must appear only after Finish()";
  ASSERT_TRUE((*writer)->Write("middle", middle).ok());
  ASSERT_TRUE((*writer)->Finish().ok());
  writer->reset();
  EXPECT_EQ(DirectoryEntries(directory_), std::vector<std::string>{"ordered.safetensors"});

  const std::string bytes = ReadFile(path);
  const uint64_t header_length = ReadLittleEndian64(bytes);
  EXPECT_EQ(header_length % 8, 0u);
  const std::string header = bytes.substr(8, header_length);
  ASSERT_EQ(header.front(), '{');
  const size_t closing = header.find_last_of('}');
  EXPECT_EQ(header.find_first_not_of(' ', closing + 1), std::string::npos) << "padding must be spaces";
  EXPECT_LT(header.size() - (closing + 1), 8u);
  const size_t metadata_position = header.find("\"__metadata__\"");
  const size_t zeta_position = header.find("\"zeta\"");
  const size_t alpha_position = header.find("\"alpha\"");
  const size_t middle_position = header.find("\"middle\"");
  ASSERT_NE(middle_position, std::string::npos);
  EXPECT_LT(metadata_position, zeta_position);
  EXPECT_LT(zeta_position, alpha_position);
  EXPECT_LT(alpha_position, middle_position);

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Info("zeta")->begin, 0u);
  EXPECT_EQ((*file)->Info("zeta")->end, 12u);
  EXPECT_EQ((*file)->Info("alpha")->begin, 12u);
  EXPECT_EQ((*file)->Info("alpha")->end, 24u);
  EXPECT_EQ((*file)->Info("middle")->begin, 24u);
  EXPECT_EQ((*file)->Info("middle")->end, 32u);
  EXPECT_EQ(bytes.size(), 8 + header_length + 32);
  EXPECT_EQ(TensorBytes(*(*file)->Get("middle")), TensorBytes(middle));
}

// ---------------------------------------------------------------------------------------------------
// Writer errors

TEST_F(SafetensorsTest, WriterRejectsTensorsThatDoNotMatchTheDeclaration) {
  const std::string path = PathOf("mismatch.safetensors");
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
      SafetensorsWriter::Create(path, {{"first", DType::kF32, {2}}, {"second", DType::kI32, {3}}});
  ASSERT_TRUE(writer.ok()) << writer.status();

  absl::Status wrong_name = (*writer)->Write("second", Patterned({3}, DType::kI32, 1));
  EXPECT_EQ(wrong_name.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_MESSAGE_CONTAINS(wrong_name, path);
  EXPECT_MESSAGE_CONTAINS(wrong_name, "\"first\"");
  absl::Status wrong_dtype = (*writer)->Write("first", Patterned({2}, DType::kI32, 1));
  EXPECT_FALSE(wrong_dtype.ok());
  EXPECT_MESSAGE_CONTAINS(wrong_dtype, "I32[2]");
  absl::Status wrong_shape = (*writer)->Write("first", Patterned({2, 1}, DType::kF32, 1));
  EXPECT_FALSE(wrong_shape.ok());
  EXPECT_MESSAGE_CONTAINS(wrong_shape, "F32[2, 1]");
  EXPECT_FALSE((*writer)->Write("first", Tensor()).ok());

  ASSERT_TRUE((*writer)->Write("first", Patterned({2}, DType::kF32, 1)).ok());
  absl::Status early_finish = (*writer)->Finish();
  EXPECT_EQ(early_finish.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_MESSAGE_CONTAINS(early_finish, "\"second\"");
  ASSERT_TRUE((*writer)->Write("second", Patterned({3}, DType::kI32, 2)).ok());
  EXPECT_FALSE((*writer)->Write("third", Patterned({3}, DType::kI32, 2)).ok());
  ASSERT_TRUE((*writer)->Finish().ok());
  EXPECT_FALSE((*writer)->Finish().ok());
  EXPECT_TRUE(SafetensorsFile::Open(path).ok());
}

TEST_F(SafetensorsTest, WriterRejectsBadDeclarations) {
  const std::string path = PathOf("bad.safetensors");
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> duplicate =
      SafetensorsWriter::Create(path, {{"x", DType::kF32, {1}}, {"x", DType::kF32, {1}}});
  ASSERT_FALSE(duplicate.ok());
  EXPECT_MESSAGE_CONTAINS(duplicate.status(), "\"x\"");
  EXPECT_MESSAGE_CONTAINS(duplicate.status(), path);
  EXPECT_FALSE(SafetensorsWriter::Create(path, {{"__metadata__", DType::kF32, {1}}}).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> negative =
      SafetensorsWriter::Create(path, {{"negative", DType::kF32, {2, -1}}});
  ASSERT_FALSE(negative.ok());
  EXPECT_MESSAGE_CONTAINS(negative.status(), "\"negative\"");
  EXPECT_FALSE(SafetensorsWriter::Create(path, {{"huge", DType::kF32, {int64_t{1} << 40, int64_t{1} << 40}}}).ok());
  EXPECT_FALSE(SafetensorsWriter::Create(path, {{std::string("bad\xff utf8"), DType::kF32, {1}}}).ok());
  EXPECT_FALSE(WriteSafetensors(path, {{"a", Tensor()}}).ok());
  // A layout the reader would refuse: the I64 tensor would start at data byte 6.
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> misaligned =
      SafetensorsWriter::Create(path, {{"odd", DType::kBF16, {3}}, {"wide", DType::kI64, {1}}});
  ASSERT_FALSE(misaligned.ok());
  EXPECT_MESSAGE_CONTAINS(misaligned.status(), path);
  EXPECT_MESSAGE_CONTAINS(misaligned.status(), "\"wide\"");
  EXPECT_MESSAGE_CONTAINS(misaligned.status(), "byte 6");
  EXPECT_TRUE(DirectoryEntries(directory_).empty()) << "failed writers must leave nothing behind";

  const std::string missing_directory = PathOf("no/such/directory/x.safetensors");
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> unwritable =
      SafetensorsWriter::Create(missing_directory, {{"x", DType::kF32, {1}}});
  ASSERT_FALSE(unwritable.ok());
  EXPECT_MESSAGE_CONTAINS(unwritable.status(), missing_directory);
  EXPECT_MESSAGE_CONTAINS(unwritable.status(), "No such file or directory");
}

TEST_F(SafetensorsTest, AbandonedWriterRemovesItsTemporaryFileAndKeepsTheOldFile) {
  const std::string path = PathOf("model.safetensors");
  Tensor old_weight = Patterned({4}, DType::kF32, 5);
  ASSERT_TRUE(WriteSafetensors(path, {{"old", old_weight}}).ok());
  {
    absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
        SafetensorsWriter::Create(path, {{"new", DType::kF32, {4}}, {"newer", DType::kF32, {4}}});
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE((*writer)->Write("new", Patterned({4}, DType::kF32, 6)).ok());
    EXPECT_EQ(DirectoryEntries(directory_).size(), 2u) << "a temporary file exists while writing";
  }
  EXPECT_EQ(DirectoryEntries(directory_), std::vector<std::string>{"model.safetensors"});
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Keys(), std::vector<std::string>{"old"});
  EXPECT_EQ(TensorBytes(*(*file)->Get("old")), TensorBytes(old_weight));
}

// ---------------------------------------------------------------------------------------------------
// Reader errors

TEST_F(SafetensorsTest, ErrorsNameTheFileAndTheKey) {
  const std::string path =
      WriteFile("model.safetensors",
                MakeFileBytes(R"({"blocks.0.ffn.0.weight":{"dtype":"F32","shape":[3,2],"data_offsets":[0,12]}})",
                              std::string(12, '\0')));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(file.status().message(),
            path + ": tensor \"blocks.0.ffn.0.weight\": data_offsets [0, 12] hold 12 bytes but shape [3, 2] of F32 "
                   "needs 24");
}

TEST_F(SafetensorsTest, MissingKeysAndFilesAreNotFound) {
  const std::string path = PathOf("present.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"present", Patterned({1}, DType::kF32, 1)}}).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_FALSE((*file)->Contains("absent.weight"));
  for (const absl::Status& status : {(*file)->Get("absent.weight").status(), (*file)->Info("absent.weight").status()}) {
    EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
    EXPECT_MESSAGE_CONTAINS(status, path);
    EXPECT_MESSAGE_CONTAINS(status, "\"absent.weight\"");
  }

  const std::string missing = PathOf("missing.safetensors");
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> absent = SafetensorsFile::Open(missing);
  ASSERT_FALSE(absent.ok());
  EXPECT_EQ(absent.status().code(), absl::StatusCode::kNotFound);
  EXPECT_MESSAGE_CONTAINS(absent.status(), missing);
  EXPECT_MESSAGE_CONTAINS(absent.status(), "No such file or directory");
  absl::StatusOr<std::unique_ptr<WeightSource>> absent_source = WeightSource::Open(missing);
  ASSERT_FALSE(absent_source.ok());
  EXPECT_EQ(absent_source.status().code(), absl::StatusCode::kNotFound);
  EXPECT_MESSAGE_CONTAINS(absent_source.status(), missing);

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> directory = SafetensorsFile::Open(directory_);
  ASSERT_FALSE(directory.ok());
  EXPECT_MESSAGE_CONTAINS(directory.status(), directory_);
}

TEST_F(SafetensorsTest, AcceptsTrailingPaddingAndEmptyHeaderObject) {
  // Headers written by other tools may carry trailing spaces; an empty object is a file with no tensors.
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> empty =
      SafetensorsFile::Open(WriteFile("empty.safetensors", MakeFileBytes("{}      ", "")));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE((*empty)->Keys().empty());
  // Unaligned data (header length not a multiple of 8) is legal.
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> unaligned = SafetensorsFile::Open(WriteFile(
      "unaligned.safetensors",
      MakeFileBytes(R"({"t":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})", LittleEndian64(0x0000000500000003))));
  ASSERT_TRUE(unaligned.ok()) << unaligned.status();
  absl::StatusOr<Tensor> tensor = (*unaligned)->Get("t");
  ASSERT_TRUE(tensor.ok()) << tensor.status();
  int32_t values[2];
  std::memcpy(values, tensor->raw_data(), sizeof(values));
  EXPECT_EQ(values[0], 3);
  EXPECT_EQ(values[1], 5);
  // The view is copied to an aligned buffer instead of pointing at a misaligned address.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(tensor->raw_data()) % alignof(int32_t), 0u);
  EXPECT_EQ(tensor->data<int32_t>()[1], 5);
}

TEST_F(SafetensorsTest, MisalignedTensorsAreRejectedNamingTheFileAndTheTensor) {
  // Header padded to 8 bytes, as every writer does, so only data_offsets decide the alignment.
  auto padded = [](std::string header) { return header + std::string((8 - header.size() % 8) % 8, ' '); };
  const std::string data(64, '\0');
  struct Case {
    std::string header;
    std::string tensor;
  };
  const std::vector<Case> cases = {
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [2, 10]}})", "\"w\""},
      {R"({"w": {"dtype": "I64", "shape": [1], "data_offsets": [4, 12]}})", "\"w\""},
      {R"({"w": {"dtype": "BF16", "shape": [1], "data_offsets": [1, 3]}})", "\"w\""},
      {R"({"a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [6, 10]}})",
       "\"b\""},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].header);
    const std::string path = WriteFile("misaligned" + std::to_string(i) + ".safetensors",
                                       MakeFileBytes(padded(cases[i].header), data));
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok());
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_MESSAGE_CONTAINS(file.status(), path);
    EXPECT_MESSAGE_CONTAINS(file.status(), cases[i].tensor);
    EXPECT_MESSAGE_CONTAINS(file.status(), "misaligned");
  }
  // Aligned offsets after a narrower tensor, and an empty tensor anywhere (nothing is read through it), are fine.
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> aligned = SafetensorsFile::Open(WriteFile(
      "aligned.safetensors",
      MakeFileBytes(padded(R"({"a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}, )"
                           R"("b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}, )"
                           R"("e": {"dtype": "I64", "shape": [0], "data_offsets": [3, 3]}})"),
                    data.substr(0, 8))));
  EXPECT_TRUE(aligned.ok()) << aligned.status();
}

TEST_F(SafetensorsTest, WriterPutsWiderDtypesFirstSoEveryTensorIsAligned) {
  // In name order the I64 would start at byte 6; the writer orders by element size instead.
  const std::string path = PathOf("mixed.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"a", Patterned({3}, DType::kBF16, 1)}, {"b", Patterned({1}, DType::kI64, 2)}})
                  .ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Info("b")->begin, 0u);
  EXPECT_EQ((*file)->Info("a")->begin, 8u);
  EXPECT_EQ(TensorBytes(*(*file)->Get("b")), TensorBytes(Patterned({1}, DType::kI64, 2)));
}

// ---------------------------------------------------------------------------------------------------
// Sharded checkpoints

class ShardedTest : public SafetensorsTest {
 protected:
  static constexpr const char* kFirstShard = "diffusion_pytorch_model-00001-of-00002.safetensors";
  static constexpr const char* kSecondShard = "diffusion_pytorch_model-00002-of-00002.safetensors";
  static constexpr const char* kIndex = "diffusion_pytorch_model.safetensors.index.json";

  void WriteShards() {
    ASSERT_TRUE(WriteSafetensors(PathOf(kFirstShard), {{"blocks.0.weight", first_}, {"blocks.0.bias", second_}}).ok());
    ASSERT_TRUE(WriteSafetensors(PathOf(kSecondShard), {{"head.weight", third_}, {"unlisted", fourth_}}).ok());
  }
  std::string WriteIndex(const std::string& name, const std::string& weight_map) {
    return WriteFile(name, R"({"metadata": {"total_size": 1234}, "weight_map": )" + weight_map + "}");
  }
  std::string StandardWeightMap() const {
    return std::string(R"({"blocks.0.weight": ")") + kFirstShard + R"(", "blocks.0.bias": ")" + kFirstShard +
           R"(", "head.weight": ")" + kSecondShard + R"("})";
  }

  void ExpectStandardContents(const WeightSource& source) {
    EXPECT_EQ(source.Keys(), (std::vector<std::string>{"blocks.0.bias", "blocks.0.weight", "head.weight", "unlisted"}));
    EXPECT_TRUE(source.Contains("unlisted")) << "tensors missing from the weight map stay usable";
    EXPECT_FALSE(source.Contains("absent"));
    EXPECT_EQ(source.FileOf("head.weight"), PathOf(kSecondShard));
    EXPECT_EQ(source.FileOf("blocks.0.bias"), PathOf(kFirstShard));
    EXPECT_EQ(source.FileOf("absent"), "");
    EXPECT_EQ(source.directory(), directory_);
    const std::vector<std::pair<std::string, const Tensor*>> expected = {
        {"blocks.0.weight", &first_}, {"blocks.0.bias", &second_}, {"head.weight", &third_}, {"unlisted", &fourth_}};
    for (const auto& [key, tensor] : expected) {
      SCOPED_TRACE(key);
      absl::StatusOr<Tensor> loaded = source.Get(key);
      ASSERT_TRUE(loaded.ok()) << loaded.status();
      EXPECT_EQ(loaded->shape(), tensor->shape());
      EXPECT_EQ(loaded->dtype(), tensor->dtype());
      EXPECT_EQ(TensorBytes(*loaded), TensorBytes(*tensor));
      absl::StatusOr<TensorInfo> info = source.Info(key);
      ASSERT_TRUE(info.ok()) << info.status();
      EXPECT_EQ(info->shape, tensor->shape());
    }
    absl::Status missing = source.Get("absent").status();
    EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
    EXPECT_MESSAGE_CONTAINS(missing, "\"absent\"");
    EXPECT_MESSAGE_CONTAINS(missing, source.description());
  }

  Tensor first_ = Patterned({4, 2}, DType::kBF16, 1);
  Tensor second_ = Patterned({4}, DType::kF32, 2);
  Tensor third_ = Patterned({2, 3}, DType::kF16, 3);
  Tensor fourth_ = Patterned({}, DType::kI64, 4);
};

TEST_F(ShardedTest, OpensThroughTheIndexAndThroughTheDirectory) {
  WriteShards();
  const std::string index_path = WriteIndex(kIndex, StandardWeightMap());

  absl::StatusOr<std::unique_ptr<WeightSource>> by_index = WeightSource::Open(index_path);
  ASSERT_TRUE(by_index.ok()) << by_index.status();
  EXPECT_EQ((*by_index)->description(), index_path);
  ExpectStandardContents(**by_index);

  absl::StatusOr<std::unique_ptr<WeightSource>> by_directory = WeightSource::Open(directory_);
  ASSERT_TRUE(by_directory.ok()) << by_directory.status();
  EXPECT_EQ((*by_directory)->description(), index_path);
  ExpectStandardContents(**by_directory);
}

TEST_F(ShardedTest, DirectoryFallsBackToTheOnlyIndexOrTheOnlyFile) {
  WriteShards();
  // Two .safetensors files and no index: ambiguous.
  absl::StatusOr<std::unique_ptr<WeightSource>> ambiguous = WeightSource::Open(directory_);
  ASSERT_FALSE(ambiguous.ok());
  EXPECT_MESSAGE_CONTAINS(ambiguous.status(), directory_);
  EXPECT_MESSAGE_CONTAINS(ambiguous.status(), kFirstShard);

  // An index with another name is used when it is the only one.
  const std::string custom_index = WriteIndex("custom.safetensors.index.json", StandardWeightMap());
  absl::StatusOr<std::unique_ptr<WeightSource>> custom = WeightSource::Open(directory_);
  ASSERT_TRUE(custom.ok()) << custom.status();
  EXPECT_EQ((*custom)->description(), custom_index);
  ExpectStandardContents(**custom);

  WriteIndex("another.safetensors.index.json", StandardWeightMap());
  absl::StatusOr<std::unique_ptr<WeightSource>> two_indexes = WeightSource::Open(directory_);
  ASSERT_FALSE(two_indexes.ok());
  EXPECT_MESSAGE_CONTAINS(two_indexes.status(), "another.safetensors.index.json");

  // The standard single-file name wins over other files (indexes with other names included).
  const std::string standard = PathOf("diffusion_pytorch_model.safetensors");
  ASSERT_TRUE(WriteSafetensors(standard, {{"single", Patterned({2}, DType::kF32, 7)}}).ok());
  absl::StatusOr<std::unique_ptr<WeightSource>> single = WeightSource::Open(directory_);
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ((*single)->description(), standard);
  EXPECT_EQ((*single)->Keys(), std::vector<std::string>{"single"});
  EXPECT_EQ((*single)->FileOf("single"), standard);
}

TEST_F(ShardedTest, DirectoryWithOneFileOrNone) {
  const std::string nested = PathOf("nested");
  ASSERT_TRUE(fs::create_directory(nested));
  absl::StatusOr<std::unique_ptr<WeightSource>> empty = WeightSource::Open(nested);
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kNotFound);
  EXPECT_MESSAGE_CONTAINS(empty.status(), nested);

  const std::string only = (fs::path(nested) / "weights.safetensors").string();
  ASSERT_TRUE(WriteSafetensors(only, {{"w", Patterned({3}, DType::kI32, 1)}}).ok());
  absl::StatusOr<std::unique_ptr<WeightSource>> single = WeightSource::Open(nested);
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ((*single)->description(), only);
  EXPECT_EQ((*single)->directory(), nested);

  absl::StatusOr<std::unique_ptr<WeightSource>> by_file = WeightSource::Open(only);
  ASSERT_TRUE(by_file.ok()) << by_file.status();
  EXPECT_EQ((*by_file)->description(), only);
  EXPECT_EQ((*by_file)->directory(), nested);
  EXPECT_EQ(TensorBytes(*(*by_file)->Get("w")), TensorBytes(*(*single)->Get("w")));
}

TEST_F(ShardedTest, IndexErrorsNameTheIndexTheShardAndTheKey) {
  WriteShards();
  struct Case {
    std::string description;
    std::string index_text;
    std::vector<std::string> expected_fragments;
  };
  const std::string first(kFirstShard);
  const std::string second(kSecondShard);
  const std::vector<Case> cases = {
      {"missing shard file", R"({"weight_map": {"blocks.0.weight": "nowhere.safetensors"}})", {"nowhere.safetensors"}},
      {"key absent from its shard", R"({"weight_map": {"blocks.0.weight": ")" + second + R"("}})",
       {"\"blocks.0.weight\"", second}},
      {"weight_map not an object", R"({"weight_map": ["a"]})", {"weight_map"}},
      {"weight_map missing", R"({"metadata": {}})", {"weight_map"}},
      {"weight_map empty", R"({"weight_map": {}})", {"weight_map"}},
      {"shard name not a string", R"({"weight_map": {"blocks.0.weight": 3}})", {"\"blocks.0.weight\""}},
      {"shard name empty", R"({"weight_map": {"blocks.0.weight": ""}})", {"\"blocks.0.weight\""}},
      {"metadata not an object", R"({"metadata": 5, "weight_map": {"blocks.0.weight": ")" + first + R"("}})",
       {"metadata"}},
      {"not JSON", R"({"weight_map": {"blocks.0.weight": )", {"JSON"}},
      {"not an object", R"([1, 2])", {"object"}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].description);
    const std::string index_path = WriteFile("case" + std::to_string(i) + ".safetensors.index.json", cases[i].index_text);
    absl::StatusOr<std::unique_ptr<WeightSource>> source = WeightSource::Open(index_path);
    ASSERT_FALSE(source.ok());
    EXPECT_MESSAGE_CONTAINS(source.status(), index_path);
    for (const std::string& fragment : cases[i].expected_fragments) EXPECT_MESSAGE_CONTAINS(source.status(), fragment);
  }

  // A key listed for a shard that lacks it is NotFound.
  const std::string wrong_shard = WriteFile("wrong_shard.safetensors.index.json",
                                            R"({"weight_map": {"head.weight": ")" + first + R"("}})");
  EXPECT_EQ(WeightSource::Open(wrong_shard).status().code(), absl::StatusCode::kNotFound);

  // A corrupt shard is reported with the index and the shard path.
  WriteFile("corrupt.safetensors", "short");
  const std::string corrupt_index =
      WriteFile("corrupt.safetensors.index.json", R"({"weight_map": {"x": "corrupt.safetensors"}})");
  absl::StatusOr<std::unique_ptr<WeightSource>> corrupt = WeightSource::Open(corrupt_index);
  ASSERT_FALSE(corrupt.ok());
  EXPECT_MESSAGE_CONTAINS(corrupt.status(), corrupt_index);
  EXPECT_MESSAGE_CONTAINS(corrupt.status(), PathOf("corrupt.safetensors"));
}

TEST_F(ShardedTest, ShardPathsMustStayInsideTheModelFolder) {
  // The model folder is a subfolder; a valid shard lies beside it, outside.
  const std::string model = PathOf("model");
  fs::create_directory(model);
  const std::string outside = PathOf("outside.safetensors");
  ASSERT_TRUE(WriteSafetensors(outside, {{"w", second_}}).ok());
  ASSERT_TRUE(WriteSafetensors(PathOf("model/inside.safetensors"), {{"w", second_}}).ok());
  fs::create_symlink(outside, PathOf("model/link_out.safetensors"));
  fs::create_symlink(PathOf("model/inside.safetensors"), PathOf("model/link_in.safetensors"));
  fs::create_directory(PathOf("model/sub"));
  struct Case {
    std::string shard;
    std::string fragment;
  };
  const std::vector<Case> refused = {
      {outside, "absolute"},
      {"../outside.safetensors", "leaves the model folder"},
      {"sub/../../outside.safetensors", "leaves the model folder"},
      {"link_out.safetensors", "outside the model folder"},
      {"sub/../link_out.safetensors", "outside the model folder"},
  };
  for (size_t i = 0; i < refused.size(); ++i) {
    SCOPED_TRACE(refused[i].shard);
    const std::string index_path = WriteIndex("model/case" + std::to_string(i) + ".safetensors.index.json",
                                              R"({"w": ")" + refused[i].shard + R"("})");
    absl::StatusOr<std::unique_ptr<WeightSource>> source = WeightSource::Open(index_path);
    ASSERT_FALSE(source.ok());
    EXPECT_EQ(source.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_MESSAGE_CONTAINS(source.status(), index_path);
    EXPECT_MESSAGE_CONTAINS(source.status(), "\"w\"");
    EXPECT_MESSAGE_CONTAINS(source.status(), refused[i].fragment);
  }
  // Paths that stay inside, through ".." or a link, still open.
  for (const std::string& shard : {"sub/../inside.safetensors", "./inside.safetensors", "link_in.safetensors"}) {
    SCOPED_TRACE(shard);
    const std::string index_path =
        WriteIndex("model/ok.safetensors.index.json", R"({"w": ")" + shard + R"("})");
    absl::StatusOr<std::unique_ptr<WeightSource>> source = WeightSource::Open(index_path);
    ASSERT_TRUE(source.ok()) << source.status();
    EXPECT_EQ(TensorBytes(*(*source)->Get("w")), TensorBytes(second_));
  }
}

TEST_F(ShardedTest, KeyInTwoShardsIsAnError) {
  ASSERT_TRUE(WriteSafetensors(PathOf("a.safetensors"), {{"shared", first_}, {"only_a", second_}}).ok());
  ASSERT_TRUE(WriteSafetensors(PathOf("b.safetensors"), {{"shared", first_}, {"only_b", second_}}).ok());
  // The map itself is consistent; "shared" also sitting in b (unlisted there) is what is wrong.
  const std::string index_path =
      WriteFile("model.safetensors.index.json",
                R"({"weight_map": {"shared": "a.safetensors", "only_a": "a.safetensors", "only_b": "b.safetensors"}})");
  absl::StatusOr<std::unique_ptr<WeightSource>> source = WeightSource::Open(index_path);
  ASSERT_FALSE(source.ok());
  EXPECT_MESSAGE_CONTAINS(source.status(), index_path);
  EXPECT_MESSAGE_CONTAINS(source.status(), "\"shared\"");
  EXPECT_MESSAGE_CONTAINS(source.status(), PathOf("a.safetensors"));
  EXPECT_MESSAGE_CONTAINS(source.status(), PathOf("b.safetensors"));
}

// ---------------------------------------------------------------------------------------------------
// Corruption fuzz: hundreds of damaged variants of a valid file. None may crash (this runs under
// AddressSanitizer in CI); every variant known to be invalid must be rejected with the file named.

class CorruptionTest : public SafetensorsTest {
 protected:
  struct Outcome {
    absl::Status status;
    std::string path;
  };

  // Writes `bytes`, opens them, and when they open reads every tensor in full.
  Outcome OpenVariant(const std::string& bytes) {
    const std::string path = WriteFile("variant_" + std::to_string(variant_count_++) + ".safetensors", bytes);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
    if (file.ok()) {
      const uint64_t header_length = ReadLittleEndian64(bytes);
      for (const std::string& key : (*file)->Keys()) {
        absl::StatusOr<TensorInfo> info = (*file)->Info(key);
        EXPECT_TRUE(info.ok()) << info.status();
        if (!info.ok()) continue;
        // Everything a tensor views lies inside the file, so reading it cannot touch unmapped memory.
        EXPECT_LE(8 + header_length + info->end, bytes.size()) << key;
        absl::StatusOr<Tensor> tensor = (*file)->Get(key);
        EXPECT_TRUE(tensor.ok()) << tensor.status();
        if (!tensor.ok()) continue;
        EXPECT_EQ(tensor->nbytes(), info->end - info->begin);
        const auto* data = static_cast<const unsigned char*>(tensor->raw_data());
        for (size_t i = 0; i < tensor->nbytes(); ++i) byte_sum_ += data[i];
      }
    }
    // The same bytes through WeightSource must behave the same.
    absl::StatusOr<std::unique_ptr<WeightSource>> source = WeightSource::Open(path);
    EXPECT_EQ(source.ok(), file.ok()) << source.status();
    ::unlink(path.c_str());
    return {file.status(), path};
  }

  void ExpectRejected(const std::string& bytes, const std::string& description,
                      const std::string& expected_fragment = "") {
    SCOPED_TRACE(description);
    const Outcome outcome = OpenVariant(bytes);
    ++rejected_count_;
    EXPECT_FALSE(outcome.status.ok()) << "accepted a corrupt file";
    EXPECT_MESSAGE_CONTAINS(outcome.status, outcome.path);
    if (!expected_fragment.empty()) EXPECT_MESSAGE_CONTAINS(outcome.status, expected_fragment);
  }

  int variant_count_ = 0;
  int rejected_count_ = 0;
  uint64_t byte_sum_ = 0;
};

TEST_F(CorruptionTest, CorruptFilesAreRejectedWithoutCrashing) {
  const std::string valid_path = PathOf("valid.safetensors");
  ASSERT_TRUE(WriteSafetensors(valid_path,
                               {{"alpha", Patterned({2, 3}, DType::kF32, 1)},
                                {"beta", Patterned({4}, DType::kBF16, 2)},
                                {"delta", Patterned({}, DType::kI32, 3)},
                                {"empty", Patterned({0, 3}, DType::kF16, 4)},
                                {"gamma", Patterned({2}, DType::kI64, 5)}},
                               {{"format", "pt"}})
                  .ok());
  const std::string valid = ReadFile(valid_path);
  const uint64_t header_length = ReadLittleEndian64(valid);
  const size_t data_start = 8 + header_length;
  ASSERT_EQ(valid.size(), data_start + 24 + 8 + 4 + 0 + 16);
  ASSERT_TRUE(OpenVariant(valid).status.ok());

  // 1. Truncation at every length: the last non-empty tensor ("beta") ends at the end of the file, so every
  //    shorter file misses header or tensor bytes.
  for (size_t length = 0; length < valid.size(); ++length) {
    ExpectRejected(valid.substr(0, length), "truncated to " + std::to_string(length));
  }

  std::mt19937 random(20240611);  // mt19937's sequence is fixed by the standard: the same variants everywhere

  // 2. Random byte flips in the header: may or may not still parse; must not crash.
  for (int i = 0; i < 200; ++i) {
    std::string bytes = valid;
    const int flips = 1 + static_cast<int>(random() % 3);
    for (int flip = 0; flip < flips; ++flip) {
      const size_t position = 8 + random() % header_length;
      bytes[position] = static_cast<char>(bytes[position] ^ (1 + random() % 255));
    }
    SCOPED_TRACE("header flip " + std::to_string(i));
    OpenVariant(bytes);
  }

  // 3. Random byte flips in the data section: the header is intact, so the file opens and the tensors
  //    show exactly the flipped bytes.
  for (int i = 0; i < 100; ++i) {
    std::string bytes = valid;
    const size_t position = data_start + random() % (valid.size() - data_start);
    bytes[position] = static_cast<char>(bytes[position] ^ (1 + random() % 255));
    SCOPED_TRACE("data flip " + std::to_string(i));
    const std::string path = WriteFile("data_flip.safetensors", bytes);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    std::string data_section;
    for (const char* key : {"gamma", "alpha", "delta", "beta", "empty"}) {
      data_section += TensorBytes(*(*file)->Get(key));  // offsets follow element size, then name
    }
    EXPECT_EQ(data_section, bytes.substr(data_start));
    ++variant_count_;
  }

  // 4. The length field overwritten.
  const std::vector<uint64_t> bad_lengths = {0,
                                             1,
                                             2,
                                             7,
                                             valid.size() - 8,  // the data bytes become trailing JSON garbage
                                             valid.size() - 7,
                                             valid.size(),
                                             100'000'001,
                                             uint64_t{1} << 32,
                                             uint64_t{1} << 63,
                                             std::numeric_limits<uint64_t>::max(),
                                             std::numeric_limits<uint64_t>::max() - 7};
  for (uint64_t length : bad_lengths) {
    ExpectRejected(LittleEndian64(length) + valid.substr(8), "header length " + std::to_string(length));
  }
  // Near-misses that might still parse (padding spaces can be absorbed); they must only not crash.
  for (int delta = -9; delta <= 9; ++delta) {
    OpenVariant(LittleEndian64(header_length + delta) + valid.substr(8));
  }

  // 5. Crafted headers, each invalid for one reason. The data section is 64 zero bytes.
  const std::string entry_tail = R"(, "data_offsets": [0, 8]})";
  struct Crafted {
    std::string header;
    std::string fragment;  // the message must contain this (the key, where one is at fault)
  };
  std::vector<Crafted> crafted = {
      // dtype
      {R"({"w": {"dtype": "F8", "shape": [8], "data_offsets": [0, 8]}})", "\"w\""},
      {R"({"w": {"dtype": "f32", "shape": [2], "data_offsets": [0, 8]}})", "f32"},
      {R"({"w": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})", "F64"},
      {R"({"w": {"dtype": 7, "shape": [2], "data_offsets": [0, 8]}})", "dtype"},
      {R"({"w": {"dtype": null, "shape": [2], "data_offsets": [0, 8]}})", "dtype"},
      {R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", "dtype"},
      // shape
      {R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", "\"w\""},
      {R"({"w": {"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 8]}})", "dimension 1"},
      {R"({"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}})", "\"w\""},
      {R"({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 8]}})", "\"w\""},
      {R"({"w": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}})", "\"w\""},
      {R"({"w": {"dtype": "F32", "shape": [null], "data_offsets": [0, 8]}})", "\"w\""},
      {R"({"w": {"dtype": "F32", "shape": [[2]], "data_offsets": [0, 8]}})", "\"w\""},
      {R"({"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}})", "shape"},
      {R"({"w": {"dtype": "F32", "shape": {"0": 2}, "data_offsets": [0, 8]}})", "shape"},
      {R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", "shape"},
      {R"({"w": {"dtype": "F32", "shape": [18446744073709551616], "data_offsets": [0, 8]}})", "\"w\""},
      {R"({"w": {"dtype": "F32", "shape": [9223372036854775808], "data_offsets": [0, 8]}})", "\"w\""},
      {R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})", "too large"},
      {R"({"w": {"dtype": "I64", "shape": [2305843009213693952], "data_offsets": [0, 8]}})", "too large"},
      {R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 0], "data_offsets": [0, 0]}})", "too large"},
      {R"({"w": {"dtype": "F32", "shape": [-0.0], "data_offsets": [0, 0]}})", "\"w\""},
      // data_offsets
      {R"({"w": {"dtype": "F32", "shape": [2]}})", "data_offsets"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8]}})", "data_offsets"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]}})", "data_offsets"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}})", "data_offsets"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, "8"]}})", "data_offsets"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8.0]}})", "data_offsets"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": {"begin": 0, "end": 8}}})", "data_offsets"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": null}})", "data_offsets"},
      {R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}})", "begin after end"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 12]}})", "needs 8"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", "needs 8"},
      {R"({"w": {"dtype": "F32", "shape": [], "data_offsets": [0, 0]}})", "needs 4"},
      {R"({"w": {"dtype": "F32", "shape": [32], "data_offsets": [0, 128]}})", "data section"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [60, 68]}})", "data section"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [18446744073709551608, 18446744073709551615]}})",
       "\"w\""},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 18446744073709551616]}})", "data_offsets"},
      // overlaps (the second name in sort order is the one reported first; both are named)
      {R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
       "overlap"},
      {R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
       "overlap"},
      {R"({"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}, "b": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}, "c": {"dtype": "F32", "shape": [1], "data_offsets": [16, 20]}})",
       "\"c\""},
      {R"({"a": {"dtype": "I64", "shape": [4], "data_offsets": [16, 48]}, "b": {"dtype": "I64", "shape": [3], "data_offsets": [0, 24]}})",
       "\"a\""},
      // entries that are not objects
      {R"({"w": 5})", "\"w\""},
      {R"({"w": [0, 8]})", "\"w\""},
      {R"({"w": null})", "\"w\""},
      {R"({"w": "F32"})", "\"w\""},
      // metadata
      {R"({"__metadata__": "pt"})", "__metadata__"},
      {R"({"__metadata__": ["pt"]})", "__metadata__"},
      {R"({"__metadata__": null})", "__metadata__"},
      {R"({"__metadata__": 1})", "__metadata__"},
      {R"({"__metadata__": {"format": 1}})", "\"format\""},
      {R"({"__metadata__": {"format": {"nested": "x"}}})", "\"format\""},
      {R"({"__metadata__": {"format": null}})", "\"format\""},
      // top level not an object
      {R"([])", "object"},
      {R"("text")", "object"},
      {R"(42)", "object"},
      {R"(null)", "object"},
      {R"(true)", "object"},
      // not JSON at all
      {R"({)", "JSON"},
      {R"({"w":})", "JSON"},
      {R"({"w": {"dtype": "F32",}})", "JSON"},
      {R"({'w': 1})", "JSON"},
      {R"({/* comment */})", "JSON"},
      {R"({"a": 1} trailing)", "JSON"},
      {R"({"a": 1}})", "JSON"},
      {std::string("{\"w\0\": 1}", 9), "JSON"},
      {std::string("{\"\xff\xfe\": 1}"), "JSON"},
      {std::string("{\"\xc3\": 1}"), "JSON"},
      {"        ", "JSON"},
      {std::string(8, '\0'), "JSON"},
      {std::string(200000, '['), "JSON"},
      {std::string(50000, '[') + std::string(50000, ']'), "object"},
      {"{\"" + std::string(100000, 'x'), "JSON"},
      // duplicate keys: the parser would keep only the second entry
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})",
       "\"w\" twice"},
  };
  // Deeply nested objects: valid JSON, but the entry lacks its fields.
  std::string nested;
  for (int depth = 0; depth < 20000; ++depth) nested += R"({"w": )";
  nested += "1";
  nested += std::string(20000, '}');
  crafted.push_back({nested, "\"w\""});
  // A bad entry after a good one.
  crafted.push_back({R"({"v": {"dtype": "F32", "shape": [2])" + entry_tail + R"(, "w": {"dtype": "F32", "shape": [2]}})",
                     "\"w\""});
  // Garbage headers of assorted lengths.
  for (int i = 0; i < 30; ++i) {
    std::string garbage(1 + random() % 300, '\0');
    for (char& byte : garbage) byte = static_cast<char>(random() % 256);
    crafted.push_back({garbage, ""});
  }
  const std::string data_section(64, '\0');
  for (size_t i = 0; i < crafted.size(); ++i) {
    ExpectRejected(MakeFileBytes(crafted[i].header, data_section),
                   "crafted " + std::to_string(i) + ": " + crafted[i].header.substr(0, 120), crafted[i].fragment);
  }

  // 6. Crafted headers again, each cut short in the middle of the data section.
  for (size_t i = 0; i < 20; ++i) {
    const std::string header = R"({"w": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}})";
    ExpectRejected(MakeFileBytes(header, data_section.substr(0, i * 3)), "short data " + std::to_string(i), "\"w\"");
  }

  RecordProperty("variants", variant_count_);
  RecordProperty("rejected", rejected_count_);
  // Some variants opened; reading them touched their bytes.
  EXPECT_GE(variant_count_, 300);
  EXPECT_GE(rejected_count_, 300);
  EXPECT_GT(byte_sum_, 0u);
}

}  // namespace
}  // namespace zoetrope
