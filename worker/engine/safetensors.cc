#include "worker/engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <limits>
#include <optional>
#include <set>
#include <tuple>

#include <nlohmann/json.hpp>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace zoetrope {
namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

// The reference implementation refuses headers above 100 MB; a corrupt length field must not make us
// parse (or allocate for) gigabytes of tensor data as JSON.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// Index files are small (a line per tensor); the same bound keeps a wrong path from being slurped.
constexpr uint64_t kMaxIndexBytes = 100'000'000;
// Keys and JSON values quoted in messages; a corrupt file can hold megabyte-long ones.
constexpr size_t kMaxQuotedChars = 160;
// Parser messages end with the token last read, so they get more room.
constexpr size_t kMaxParserMessageChars = 400;

constexpr char kMetadataKey[] = "__metadata__";

// A std::string whichever string_view type DTypeName returns: Debian's abseil has its own string_view,
// and the two do not convert into each other.
std::string Name(DType dtype) { return std::string(DTypeName(dtype)); }

std::string Quote(absl::string_view text) {
  if (text.size() > kMaxQuotedChars) {
    return absl::StrCat("\"", absl::Utf8SafeCHexEscape(text.substr(0, kMaxQuotedChars)), "\"...");
  }
  return absl::StrCat("\"", absl::Utf8SafeCHexEscape(text), "\"");
}

// An exception message made safe to log: cut short, and control or non-ASCII bytes escaped, since the
// parser quotes raw bytes of the corrupt input (possibly half a UTF-8 sequence).
std::string Printable(absl::string_view text) {
  std::string result;
  for (size_t i = 0; i < text.size() && i < kMaxParserMessageChars; ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if (byte < 0x20 || byte >= 0x7f) {
      absl::StrAppend(&result, "\\x", absl::Hex(byte, absl::kZeroPad2));
    } else {
      result.push_back(static_cast<char>(byte));
    }
  }
  if (text.size() > kMaxParserMessageChars) result += "...";
  return result;
}

std::string Truncated(std::string text) {
  if (text.size() > kMaxQuotedChars) {
    text.resize(kMaxQuotedChars);
    text += "...";
  }
  return text;
}

// A JSON value as it appears in the file, for error messages; never throws (invalid UTF-8 is replaced).
std::string Describe(const Json& value) {
  return Truncated(value.dump(-1, ' ', false, Json::error_handler_t::replace));
}

// Call right after the failing call, with arguments that do not allocate: allocation may overwrite errno.
absl::Status IoError(const std::string& path, absl::string_view action) {
  const int error_number = errno;
  return absl::ErrnoToStatus(error_number, absl::StrCat(path, ": ", action));
}

// Re-labels an error from a lower layer with more context, keeping its code.
absl::Status WithContext(const absl::Status& status, absl::string_view context) {
  return absl::Status(status.code(), absl::StrCat(context, status.message()));
}

// A JSON number that is a non-negative integer. nlohmann stores non-negative literals as unsigned;
// "3.0", "-1" and integers beyond 2^64 (parsed as floating point) are all rejected here.
std::optional<uint64_t> NonNegativeInteger(const Json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer()) {
    const int64_t signed_value = value.get<int64_t>();
    if (signed_value >= 0) return static_cast<uint64_t>(signed_value);
  }
  return std::nullopt;
}

// Bytes of a tensor, or nullopt when the shape is too large. The product of the non-zero extents must fit
// in int64 even when another extent is zero: NumElements multiplies left to right in int64, so [2^62,
// 2^62, 0] would overflow (undefined behaviour) before reaching the zero.
std::optional<uint64_t> ByteCount(const Shape& shape, DType dtype) {
  uint64_t nonzero_product = 1;
  bool has_zero = false;
  for (int64_t extent : shape) {
    if (extent < 0) return std::nullopt;
    if (extent == 0) {
      has_zero = true;
      continue;
    }
    if (__builtin_mul_overflow(nonzero_product, static_cast<uint64_t>(extent), &nonzero_product) ||
        nonzero_product > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return std::nullopt;
    }
  }
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(nonzero_product, static_cast<uint64_t>(DTypeSize(dtype)), &bytes)) return std::nullopt;
  return has_zero ? 0 : bytes;
}

// Tensors are handed out as typed pointers into the mapping, so each must start on a multiple of its element
// size. An empty tensor is exempt: nothing is ever read through its pointer.
bool IsMisaligned(uint64_t begin, uint64_t byte_count, DType dtype) {
  return byte_count > 0 && begin % DTypeSize(dtype) != 0;
}

struct MappedFile {
  std::shared_ptr<void> mapping;
  size_t size = 0;
};

absl::StatusOr<MappedFile> MapFile(const std::string& path) {
  const int descriptor = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) return IoError(path, "cannot open");
  struct stat file_status;
  if (::fstat(descriptor, &file_status) != 0) {
    absl::Status status = IoError(path, "cannot stat");
    ::close(descriptor);
    return status;
  }
  if (!S_ISREG(file_status.st_mode)) {
    ::close(descriptor);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const size_t size = static_cast<size_t>(file_status.st_size);
  if (size < 8) {
    ::close(descriptor);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": file is ", size, " bytes, too short for the 8-byte header length"));
  }
  void* address = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, descriptor, 0);
  if (address == MAP_FAILED) {
    absl::Status status = IoError(path, "cannot mmap");
    ::close(descriptor);
    return status;
  }
  // The mapping stays valid after the descriptor is closed.
  ::close(descriptor);
  MappedFile mapped;
  mapped.size = size;
  mapped.mapping = std::shared_ptr<void>(address, [size](void* pointer) { ::munmap(pointer, size); });
  return mapped;
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, uint64_t limit) {
  const int descriptor = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) return IoError(path, "cannot open");
  struct stat file_status;
  if (::fstat(descriptor, &file_status) != 0) {
    absl::Status status = IoError(path, "cannot stat");
    ::close(descriptor);
    return status;
  }
  if (!S_ISREG(file_status.st_mode)) {
    ::close(descriptor);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  if (static_cast<uint64_t>(file_status.st_size) > limit) {
    ::close(descriptor);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": file is ", file_status.st_size, " bytes, more than the ", limit, "-byte limit"));
  }
  std::string contents;
  char buffer[1 << 16];
  while (true) {
    const ssize_t count = ::read(descriptor, buffer, sizeof(buffer));
    if (count < 0) {
      if (errno == EINTR) continue;
      absl::Status status = IoError(path, "cannot read");
      ::close(descriptor);
      return status;
    }
    if (count == 0) break;
    contents.append(buffer, static_cast<size_t>(count));
    if (contents.size() > limit) {
      ::close(descriptor);
      return absl::InvalidArgumentError(absl::StrCat(path, ": file grew past the ", limit, "-byte limit"));
    }
  }
  ::close(descriptor);
  return contents;
}

uint64_t ReadLittleEndian64(const unsigned char* bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

void StoreLittleEndian64(uint64_t value, unsigned char* bytes) {
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(value >> (8 * i));
}

// Parses JSON, turning every parser exception into a Status. `duplicate_top_level_key` receives the first
// key repeated at the top level: nlohmann keeps the last occurrence silently, which for a tensor header
// would hide a second, conflicting entry.
absl::StatusOr<Json> ParseJson(const std::string& path, absl::string_view what, const char* begin, const char* end,
                               std::optional<std::string>* duplicate_top_level_key) {
  std::set<std::string> top_level_keys;
  auto callback = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (duplicate_top_level_key != nullptr && depth == 1 && event == Json::parse_event_t::key &&
        !duplicate_top_level_key->has_value() && parsed.is_string()) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!top_level_keys.insert(key).second) *duplicate_top_level_key = key;
    }
    return true;
  };
  try {
    return Json::parse(begin, end, callback, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const std::exception& error) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what, " is not valid JSON: ", Printable(error.what())));
  }
}

struct ParsedHeader {
  std::map<std::string, TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
};

absl::Status ParseMetadata(const std::string& path, const Json& value, std::map<std::string, std::string>* metadata) {
  if (!value.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": \"__metadata__\" is ", value.type_name(),
                                                   ", not an object of strings"));
  }
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": \"__metadata__\" entry ", Quote(key), " is ", Describe(item), ", not a string"));
    }
    (*metadata)[key] = item.get<std::string>();
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorInfo> ParseTensorEntry(const std::string& path, const std::string& key, const Json& entry,
                                            uint64_t data_section_bytes) {
  const std::string prefix = absl::StrCat(path, ": tensor ", Quote(key), ": ");
  auto invalid = [&](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(prefix, parts...)); };
  if (!entry.is_object()) return invalid("entry is ", Describe(entry), ", not an object");

  TensorInfo info;

  const auto dtype_field = entry.find("dtype");
  if (dtype_field == entry.end()) return invalid("missing \"dtype\"");
  if (!dtype_field->is_string()) return invalid("\"dtype\" is ", dtype_field->type_name(), ", not a string");
  absl::StatusOr<DType> dtype = DTypeFromName(dtype_field->get_ref<const std::string&>());
  if (!dtype.ok()) return invalid(dtype.status().message());
  info.dtype = *dtype;

  const auto shape_field = entry.find("shape");
  if (shape_field == entry.end()) return invalid("missing \"shape\"");
  if (!shape_field->is_array()) return invalid("\"shape\" is ", shape_field->type_name(), ", not an array");
  for (size_t axis = 0; axis < shape_field->size(); ++axis) {
    const Json& extent_value = (*shape_field)[axis];
    const std::optional<uint64_t> extent = NonNegativeInteger(extent_value);
    if (!extent.has_value() || *extent > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return invalid("shape ", Describe(*shape_field), ": dimension ", axis, " is ", Describe(extent_value),
                     ", not a non-negative integer");
    }
    info.shape.push_back(static_cast<int64_t>(*extent));
  }
  const std::optional<uint64_t> byte_count = ByteCount(info.shape, info.dtype);
  if (!byte_count.has_value()) {
    return invalid("shape ", Describe(*shape_field), " of ", Name(info.dtype), " is too large");
  }

  const auto offsets_field = entry.find("data_offsets");
  if (offsets_field == entry.end()) return invalid("missing \"data_offsets\"");
  std::optional<uint64_t> begin;
  std::optional<uint64_t> end;
  if (offsets_field->is_array() && offsets_field->size() == 2) {
    begin = NonNegativeInteger((*offsets_field)[0]);
    end = NonNegativeInteger((*offsets_field)[1]);
  }
  if (!begin.has_value() || !end.has_value()) {
    return invalid("\"data_offsets\" is ", Describe(*offsets_field), ", not [begin, end] with non-negative integers");
  }
  if (*begin > *end) return invalid("data_offsets [", *begin, ", ", *end, "] begin after end");
  if (*end - *begin != *byte_count) {
    return invalid("data_offsets [", *begin, ", ", *end, "] hold ", *end - *begin, " bytes but shape ",
                   ShapeToString(info.shape), " of ", Name(info.dtype), " needs ", *byte_count);
  }
  if (*end > data_section_bytes) {
    return invalid("data_offsets [", *begin, ", ", *end, "] run past the end of the data section (",
                   data_section_bytes, " bytes; file truncated?)");
  }
  if (IsMisaligned(*begin, *byte_count, info.dtype)) {
    return invalid("data_offsets [", *begin, ", ", *end, "] start at a byte that is not a multiple of the ",
                   DTypeSize(info.dtype), "-byte ", Name(info.dtype), " element size (misaligned data)");
  }
  info.begin = static_cast<size_t>(*begin);
  info.end = static_cast<size_t>(*end);
  return info;
}

// Two tensors sharing bytes would alias: writing one through a converted copy would be fine, but the file
// is certainly not what its writer meant, and the reference implementation rejects it too.
absl::Status CheckNoOverlap(const std::string& path, const std::map<std::string, TensorInfo>& tensors) {
  std::vector<std::tuple<size_t, size_t, const std::string*>> ranges;
  for (const auto& [name, info] : tensors) {
    if (info.end > info.begin) ranges.emplace_back(info.begin, info.end, &name);  // empty ranges hold no bytes
  }
  std::sort(ranges.begin(), ranges.end(), [](const auto& left, const auto& right) {
    return std::tie(std::get<0>(left), std::get<1>(left), *std::get<2>(left)) <
           std::tie(std::get<0>(right), std::get<1>(right), *std::get<2>(right));
  });
  // Compare against the furthest-reaching range so far, not just the previous one: a long range can
  // cover several later ones.
  const std::tuple<size_t, size_t, const std::string*>* furthest = nullptr;
  for (const auto& range : ranges) {
    if (furthest != nullptr && std::get<0>(range) < std::get<1>(*furthest)) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor ", Quote(*std::get<2>(range)), " data_offsets [", std::get<0>(range), ", ",
          std::get<1>(range), "] overlap tensor ", Quote(*std::get<2>(*furthest)), " data_offsets [",
          std::get<0>(*furthest), ", ", std::get<1>(*furthest), "]"));
    }
    if (furthest == nullptr || std::get<1>(range) > std::get<1>(*furthest)) furthest = &range;
  }
  return absl::OkStatus();
}

absl::StatusOr<ParsedHeader> ParseHeader(const std::string& path, const char* header_begin, size_t header_bytes,
                                         uint64_t data_section_bytes) {
  std::optional<std::string> duplicate_key;
  absl::StatusOr<Json> header = ParseJson(path, "header", header_begin, header_begin + header_bytes, &duplicate_key);
  if (!header.ok()) return header.status();
  if (!header->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header is a JSON ", header->type_name(), ", not an object"));
  }
  if (duplicate_key.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header lists ", Quote(*duplicate_key), " twice"));
  }
  ParsedHeader parsed;
  for (const auto& [key, value] : header->items()) {
    if (key == kMetadataKey) {
      absl::Status status = ParseMetadata(path, value, &parsed.metadata);
      if (!status.ok()) return status;
      continue;
    }
    absl::StatusOr<TensorInfo> info = ParseTensorEntry(path, key, value, data_section_bytes);
    if (!info.ok()) return info.status();
    parsed.tensors.emplace(key, *std::move(info));
  }
  absl::Status overlap = CheckNoOverlap(path, parsed.tensors);
  if (!overlap.ok()) return overlap;
  return parsed;
}

bool IsRegularFile(const std::string& path) {
  struct stat file_status;
  return ::stat(path.c_str(), &file_status) == 0 && S_ISREG(file_status.st_mode);
}

// Resolves a checkpoint directory to the file to open, in the order WeightSource::Open documents.
absl::StatusOr<std::string> ResolveDirectory(const std::string& directory) {
  const std::filesystem::path root(directory);
  for (const char* preferred : {"diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors"}) {
    const std::string candidate = (root / preferred).string();
    if (IsRegularFile(candidate)) return candidate;
  }
  std::vector<std::string> index_files;
  std::vector<std::string> weight_files;
  std::error_code error;
  std::filesystem::directory_iterator iterator(root, error);
  if (error) {
    return absl::Status(absl::ErrnoToStatusCode(error.value()),
                        absl::StrCat(directory, ": cannot list directory: ", error.message()));
  }
  for (const std::filesystem::directory_iterator end; iterator != end; iterator.increment(error)) {
    if (error) break;
    const std::string name = iterator->path().filename().string();
    if (!IsRegularFile(iterator->path().string())) continue;
    if (absl::EndsWith(name, ".safetensors.index.json")) index_files.push_back(name);
    if (absl::EndsWith(name, ".safetensors")) weight_files.push_back(name);
  }
  if (error) {
    return absl::Status(absl::ErrnoToStatusCode(error.value()),
                        absl::StrCat(directory, ": cannot list directory: ", error.message()));
  }
  std::sort(index_files.begin(), index_files.end());
  std::sort(weight_files.begin(), weight_files.end());
  if (index_files.size() == 1) return (root / index_files[0]).string();
  if (index_files.size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(directory, ": several index files (",
                                                   absl::StrJoin(index_files, ", "), "); name the one to use"));
  }
  if (weight_files.size() == 1) return (root / weight_files[0]).string();
  if (weight_files.size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(directory, ": several .safetensors files (",
                                                   absl::StrJoin(weight_files, ", "),
                                                   ") and no .safetensors.index.json; name the one to use"));
  }
  return absl::NotFoundError(absl::StrCat(directory, ": no .safetensors or .safetensors.index.json file"));
}

absl::Status WriteAll(int descriptor, const char* data, size_t size) {
  while (size > 0) {
    // Linux transfers at most about 2 GiB per call; larger requests just come back short.
    const size_t chunk = std::min<size_t>(size, size_t{1} << 30);
    const ssize_t written = ::write(descriptor, data, chunk);
    if (written < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, "write failed");
    }
    data += written;
    size -= static_cast<size_t>(written);
  }
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// SafetensorsFile

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  absl::StatusOr<MappedFile> mapped = MapFile(path);
  if (!mapped.ok()) return mapped.status();
  const auto* bytes = static_cast<const unsigned char*>(mapped->mapping.get());
  const uint64_t header_bytes = ReadLittleEndian64(bytes);
  const uint64_t available = mapped->size - 8;
  if (header_bytes == 0) return absl::InvalidArgumentError(absl::StrCat(path, ": header length is 0"));
  if (header_bytes > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length ", header_bytes, " exceeds the ",
                                                   kMaxHeaderBytes, "-byte limit (corrupt file?)"));
  }
  if (header_bytes > available) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length ", header_bytes,
                                                   " runs past the end of the file (", mapped->size, " bytes)"));
  }
  const char* header_begin = reinterpret_cast<const char*>(bytes) + 8;
  absl::StatusOr<ParsedHeader> parsed;
  try {
    parsed = ParseHeader(path, header_begin, static_cast<size_t>(header_bytes), available - header_bytes);
  } catch (const std::exception& error) {
    // ParseHeader checks types before every access; this is the backstop that keeps exceptions (including
    // std::bad_alloc on a huge header) inside the module.
    return absl::InternalError(absl::StrCat(path, ": reading the header failed: ", Printable(error.what())));
  }
  if (!parsed.ok()) return parsed.status();

  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = std::move(mapped->mapping);
  file->data_section_ = header_begin + header_bytes;
  file->tensors_ = std::move(parsed->tensors);
  file->metadata_ = std::move(parsed->metadata);
  return file;
}

std::vector<std::string> SafetensorsFile::Keys() const {
  std::vector<std::string> keys;
  keys.reserve(tensors_.size());
  for (const auto& [name, info] : tensors_) keys.push_back(name);
  return keys;
}

absl::StatusOr<TensorInfo> SafetensorsFile::Info(const std::string& key) const {
  const auto found = tensors_.find(key);
  if (found == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat(path_, ": no tensor ", Quote(key)));
  }
  return found->second;
}

absl::StatusOr<Tensor> SafetensorsFile::Get(const std::string& key) const {
  absl::StatusOr<TensorInfo> info = Info(key);
  if (!info.ok()) return info.status();
  const char* data = data_section_ + info->begin;
  // Offsets are checked to be element-aligned within the data section, but a header whose length is not a
  // multiple of 8 (legal, unlike the reference writer's output) shifts the whole section: such a tensor is
  // copied into an aligned buffer rather than viewed through a misaligned typed pointer.
  if (reinterpret_cast<uintptr_t>(data) % DTypeSize(info->dtype) != 0) {
    Tensor copy = Tensor::Host(info->shape, info->dtype);
    std::memcpy(copy.raw_data(), data, info->end - info->begin);
    return copy;
  }
  // The mapping is read-only: a consumer writing through this view faults, which is the point — weights
  // are shared by every tensor taken from the file.
  return Tensor::WrapHost(const_cast<char*>(data), info->shape, info->dtype, mapping_);
}

// ---------------------------------------------------------------------------------------------------
// WeightSource

namespace {

// A shard name from an index is a path relative to the model folder. An index that names an absolute path or
// climbs out with ".." would make the worker map any file it can read as weights (and show its bytes in
// errors), so both are refused before anything is opened.
absl::Status CheckShardName(const std::string& index_path, const std::string& key, const std::string& shard) {
  const std::filesystem::path shard_path(shard);
  const std::string prefix = absl::StrCat(index_path, ": \"weight_map\" entry ", Quote(key), ": shard ", Quote(shard));
  if (shard_path.is_absolute() || shard_path.has_root_name() || shard_path.has_root_directory()) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, " is an absolute path; shards must lie in the model folder"));
  }
  const std::filesystem::path normal = shard_path.lexically_normal();
  if (normal.empty() || *normal.begin() == "..") {
    return absl::InvalidArgumentError(absl::StrCat(prefix, " leaves the model folder"));
  }
  return absl::OkStatus();
}

// The same rule after symbolic links: a link inside the folder may not lead out of it. A shard that does not
// exist passes here and fails when opened, with the usual not-found message.
absl::Status CheckShardStaysInside(const std::string& index_path, const std::string& key, const std::string& shard,
                                   const std::string& directory) {
  std::error_code error;
  std::filesystem::path root = std::filesystem::weakly_canonical(directory, error);
  if (error) return absl::OkStatus();  // the open that follows reports the folder's problem
  if (root.filename().empty()) root = root.parent_path();  // "dir/" ends in an empty component
  const std::filesystem::path target = std::filesystem::weakly_canonical(root / shard, error);
  if (error) return absl::OkStatus();
  const auto [root_end, target_end] = std::mismatch(root.begin(), root.end(), target.begin(), target.end());
  if (root_end != root.end()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": \"weight_map\" entry ", Quote(key), ": shard ",
                                                   Quote(shard), " resolves to ", target.string(),
                                                   ", outside the model folder ", root.string()));
  }
  return absl::OkStatus();
}

absl::Status OpenIndex(const std::string& index_path, const std::string& directory,
                       std::vector<std::unique_ptr<SafetensorsFile>>* files) {
  absl::StatusOr<std::string> contents = ReadSmallFile(index_path, kMaxIndexBytes);
  if (!contents.ok()) return contents.status();
  absl::StatusOr<Json> index =
      ParseJson(index_path, "index", contents->data(), contents->data() + contents->size(), nullptr);
  if (!index.ok()) return index.status();
  if (!index->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": index is a JSON ", index->type_name(), ", not an object"));
  }
  const auto metadata = index->find("metadata");
  if (metadata != index->end() && !metadata->is_object() && !metadata->is_null()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": \"metadata\" is ", metadata->type_name(), ", not an object"));
  }
  const auto weight_map = index->find("weight_map");
  if (weight_map == index->end()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": missing \"weight_map\""));
  }
  if (!weight_map->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": \"weight_map\" is ", weight_map->type_name(), ", not an object"));
  }
  if (weight_map->empty()) return absl::InvalidArgumentError(absl::StrCat(index_path, ": \"weight_map\" is empty"));

  std::map<std::string, std::string> shard_of_key;
  std::map<std::string, size_t> file_of_shard;
  std::map<std::string, std::string> first_key_of_shard;  // names the entry when a shard's path is refused
  for (const auto& [key, shard] : weight_map->items()) {
    if (!shard.is_string() || shard.get_ref<const std::string&>().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": \"weight_map\" entry ", Quote(key), " is ",
                                                     Describe(shard), ", not a shard file name"));
    }
    const std::string& name = shard.get_ref<const std::string&>();
    if (absl::Status inside = CheckShardName(index_path, key, name); !inside.ok()) return inside;
    shard_of_key[key] = name;
    file_of_shard.emplace(name, 0);
    first_key_of_shard.emplace(name, key);
  }
  for (auto& [shard, file_index] : file_of_shard) {
    const std::string shard_path = (std::filesystem::path(directory) / shard).string();
    if (absl::Status inside = CheckShardStaysInside(index_path, first_key_of_shard.at(shard), shard, directory);
        !inside.ok()) {
      return inside;
    }
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(shard_path);
    if (!file.ok()) {
      return WithContext(file.status(), absl::StrCat(index_path, ": shard ", Quote(shard), ": "));
    }
    file_index = files->size();
    files->push_back(*std::move(file));
  }
  for (const auto& [key, shard] : shard_of_key) {
    const size_t file_index = file_of_shard.at(shard);
    if (!(*files)[file_index]->Contains(key)) {
      return absl::NotFoundError(absl::StrCat(index_path, ": \"weight_map\" puts ", Quote(key), " in shard ",
                                              Quote(shard), ", but ", (*files)[file_index]->path(),
                                              " has no such tensor"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<WeightSource>> WeightSource::Open(const std::string& path) {
  struct stat path_status;
  if (::stat(path.c_str(), &path_status) != 0) return IoError(path, "cannot open");
  std::string target = path;
  std::string directory;
  if (S_ISDIR(path_status.st_mode)) {
    absl::StatusOr<std::string> resolved = ResolveDirectory(path);
    if (!resolved.ok()) return resolved.status();
    target = *std::move(resolved);
    directory = path;
  } else {
    directory = std::filesystem::path(path).parent_path().string();
    if (directory.empty()) directory = ".";
  }

  std::unique_ptr<WeightSource> source(new WeightSource());
  source->description_ = target;
  source->directory_ = directory;
  try {
    if (absl::EndsWith(target, ".json")) {
      absl::Status status = OpenIndex(target, directory, &source->files_);
      if (!status.ok()) return status;
    } else {
      absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(target);
      if (!file.ok()) return file.status();
      source->files_.push_back(*std::move(file));
    }
  } catch (const std::exception& error) {
    return absl::InternalError(absl::StrCat(target, ": opening failed: ", Printable(error.what())));
  }

  // Every tensor of every shard is reachable, including ones the weight map forgot; a key in two files
  // is ambiguous, so it is an error rather than a silent pick.
  for (size_t file_index = 0; file_index < source->files_.size(); ++file_index) {
    for (const std::string& key : source->files_[file_index]->Keys()) {
      const auto [existing, inserted] = source->key_to_file_.emplace(key, file_index);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat(target, ": tensor ", Quote(key), " is in both ",
                                                       source->files_[existing->second]->path(), " and ",
                                                       source->files_[file_index]->path()));
      }
    }
  }
  return source;
}

std::vector<std::string> WeightSource::Keys() const {
  std::vector<std::string> keys;
  keys.reserve(key_to_file_.size());
  for (const auto& [key, file_index] : key_to_file_) keys.push_back(key);
  return keys;
}

bool WeightSource::Contains(const std::string& key) const { return key_to_file_.count(key) != 0; }

std::string WeightSource::FileOf(const std::string& key) const {
  const auto found = key_to_file_.find(key);
  return found == key_to_file_.end() ? std::string() : files_[found->second]->path();
}

absl::StatusOr<TensorInfo> WeightSource::Info(const std::string& key) const {
  const auto found = key_to_file_.find(key);
  if (found == key_to_file_.end()) return absl::NotFoundError(absl::StrCat(description_, ": no tensor ", Quote(key)));
  return files_[found->second]->Info(key);
}

absl::StatusOr<Tensor> WeightSource::Get(const std::string& key) const {
  const auto found = key_to_file_.find(key);
  if (found == key_to_file_.end()) return absl::NotFoundError(absl::StrCat(description_, ": no tensor ", Quote(key)));
  return files_[found->second]->Get(key);
}

// ---------------------------------------------------------------------------------------------------
// SafetensorsWriter

struct SafetensorsWriter::State {
  std::string path;
  std::string temporary_path;
  std::vector<Entry> entries;
  size_t next_entry = 0;
  int descriptor = -1;
  bool finished = false;
  // Set after an I/O error: the temporary file's contents are unknown, so nothing more may be written.
  bool failed = false;
};

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, std::vector<Entry> entries, const std::map<std::string, std::string>& metadata) {
  std::set<std::string> names;
  OrderedJson header = OrderedJson::object();
  if (!metadata.empty()) {
    OrderedJson metadata_object = OrderedJson::object();
    for (const auto& [key, value] : metadata) metadata_object[key] = value;
    header[kMetadataKey] = std::move(metadata_object);
  }
  uint64_t offset = 0;
  for (const Entry& entry : entries) {
    const std::string prefix = absl::StrCat(path, ": tensor ", Quote(entry.name), ": ");
    if (entry.name == kMetadataKey) return absl::InvalidArgumentError(absl::StrCat(prefix, "the name is reserved"));
    if (!names.insert(entry.name).second) return absl::InvalidArgumentError(absl::StrCat(prefix, "declared twice"));
    const std::optional<uint64_t> byte_count = ByteCount(entry.shape, entry.dtype);
    uint64_t end = 0;
    if (!byte_count.has_value() || __builtin_add_overflow(offset, *byte_count, &end)) {
      return absl::InvalidArgumentError(
          absl::StrCat(prefix, "shape ", ShapeToString(entry.shape), " is negative or too large"));
    }
    // The reader refuses misaligned tensors, so the writer never makes one (the reference writer avoids them
    // by writing wider dtypes first; WriteSafetensors does the same).
    if (IsMisaligned(offset, *byte_count, entry.dtype)) {
      return absl::InvalidArgumentError(absl::StrCat(prefix, "would start at data byte ", offset,
                                                     ", not a multiple of its ", DTypeSize(entry.dtype), "-byte ",
                                                     Name(entry.dtype), " elements; declare wider dtypes first"));
    }
    header[entry.name] = OrderedJson{{"dtype", Name(entry.dtype)},
                                     {"shape", entry.shape},
                                     {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const std::exception& error) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": tensor names and metadata must be valid UTF-8: ", Printable(error.what())));
  }
  // The reference writer pads with spaces so the data section starts 8-byte aligned.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  std::unique_ptr<SafetensorsWriter> writer(new SafetensorsWriter());
  writer->state_ = std::make_unique<State>();
  State& state = *writer->state_;
  state.path = path;
  state.temporary_path = absl::StrCat(path, ".tmp.", ::getpid());
  state.entries = std::move(entries);
  state.descriptor = ::open(state.temporary_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (state.descriptor < 0) return IoError(state.temporary_path, "cannot create");
  unsigned char length_bytes[8];
  StoreLittleEndian64(header_text.size(), length_bytes);
  absl::Status status = WriteAll(state.descriptor, reinterpret_cast<const char*>(length_bytes), sizeof(length_bytes));
  if (status.ok()) status = WriteAll(state.descriptor, header_text.data(), header_text.size());
  if (!status.ok()) return WithContext(status, absl::StrCat(state.temporary_path, ": "));
  return writer;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (state_ == nullptr) return;
  if (state_->descriptor >= 0) ::close(state_->descriptor);
  if (!state_->finished) ::unlink(state_->temporary_path.c_str());
}

absl::Status SafetensorsWriter::Write(const std::string& name, const Tensor& tensor) {
  State& state = *state_;
  const std::string prefix = absl::StrCat(state.path, ": tensor ", Quote(name), ": ");
  if (state.finished) return absl::FailedPreconditionError(absl::StrCat(prefix, "written after Finish()"));
  if (state.failed) return absl::FailedPreconditionError(absl::StrCat(prefix, "an earlier write failed"));
  if (state.next_entry >= state.entries.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "all ", state.entries.size(), " declared tensors are already written"));
  }
  const Entry& expected = state.entries[state.next_entry];
  if (name != expected.name) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "expected the next declared tensor, ", Quote(expected.name)));
  }
  if (!tensor.defined()) return absl::InvalidArgumentError(absl::StrCat(prefix, "tensor is undefined"));
  if (tensor.dtype() != expected.dtype || tensor.shape() != expected.shape) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "got ", Name(tensor.dtype()),
                                                   ShapeToString(tensor.shape()), " but declared ",
                                                   Name(expected.dtype), ShapeToString(expected.shape)));
  }
  if (!tensor.device().is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "tensor is on ", tensor.device().ToString(),
                                                   "; copy it to the host first"));
  }
  absl::Status status = WriteAll(state.descriptor, static_cast<const char*>(tensor.raw_data()), tensor.nbytes());
  if (!status.ok()) {
    state.failed = true;
    return WithContext(status, absl::StrCat(state.temporary_path, ": tensor ", Quote(name), ": "));
  }
  ++state.next_entry;
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Finish() {
  State& state = *state_;
  if (state.finished) return absl::FailedPreconditionError(absl::StrCat(state.path, ": Finish() called twice"));
  if (state.failed) return absl::FailedPreconditionError(absl::StrCat(state.path, ": an earlier write failed"));
  if (state.next_entry != state.entries.size()) {
    return absl::FailedPreconditionError(absl::StrCat(state.path, ": only ", state.next_entry, " of ",
                                                      state.entries.size(), " declared tensors written; next is ",
                                                      Quote(state.entries[state.next_entry].name)));
  }
  // fsync before rename: otherwise a power loss can leave the new name pointing at an empty file.
  if (::fsync(state.descriptor) != 0) {
    state.failed = true;
    return IoError(state.temporary_path, "fsync failed");
  }
  const int descriptor = state.descriptor;
  state.descriptor = -1;
  if (::close(descriptor) != 0) {
    state.failed = true;
    return IoError(state.temporary_path, "close failed");
  }
  if (::rename(state.temporary_path.c_str(), state.path.c_str()) != 0) {
    const int error_number = errno;
    state.failed = true;
    return absl::ErrnoToStatus(error_number,
                               absl::StrCat(state.path, ": cannot rename ", state.temporary_path, " to it"));
  }
  state.finished = true;
  return absl::OkStatus();
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<const std::pair<std::string, Tensor>*> ordered;
  ordered.reserve(tensors.size());
  for (const auto& named_tensor : tensors) {
    if (!named_tensor.second.defined()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", Quote(named_tensor.first), ": undefined"));
    }
    ordered.push_back(&named_tensor);
  }
  // Wider dtypes first, then by name (the reference writer's order): every tensor then starts aligned to its
  // element size without padding, which readers, ours included, require.
  std::sort(ordered.begin(), ordered.end(), [](const auto* left, const auto* right) {
    const size_t left_size = DTypeSize(left->second.dtype());
    const size_t right_size = DTypeSize(right->second.dtype());
    return left_size != right_size ? left_size > right_size : left->first < right->first;
  });
  std::vector<SafetensorsWriter::Entry> entries;
  entries.reserve(ordered.size());
  for (const auto* named_tensor : ordered) {
    entries.push_back({named_tensor->first, named_tensor->second.dtype(), named_tensor->second.shape()});
  }
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer = SafetensorsWriter::Create(path, std::move(entries), metadata);
  if (!writer.ok()) return writer.status();
  for (const auto* named_tensor : ordered) {
    absl::Status status = (*writer)->Write(named_tensor->first, named_tensor->second);
    if (!status.ok()) return status;
  }
  return (*writer)->Finish();
}

}  // namespace zoetrope
