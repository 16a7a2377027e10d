#include "worker/engine/prompt_clean.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace zoetrope {
namespace {

#include "worker/engine/unicode_tables.inc"

constexpr char32_t kReplacementCharacter = 0xFFFD;

// ---- table lookups ---------------------------------------------------------------------------------

template <typename Range, size_t N>
const Range* FindRange(const Range (&ranges)[N], char32_t code_point) {
  const Range* end = ranges + N;
  const Range* found =
      std::upper_bound(ranges, end, code_point, [](char32_t value, const Range& range) { return value < range.first; });
  if (found == ranges) return nullptr;
  --found;
  return code_point <= found->last ? found : nullptr;
}

template <size_t N>
bool InRanges(const CodePointRange (&ranges)[N], char32_t code_point) {
  return FindRange(ranges, code_point) != nullptr;
}

uint8_t CombiningClass(char32_t code_point) {
  if (code_point < 0x300) return 0;
  const CombiningClassRange* range = FindRange(kCombiningClasses, code_point);
  return range != nullptr ? range->combining_class : 0;
}

const Decomposition* FindDecomposition(char32_t code_point) {
  const Decomposition* end = std::end(kDecompositions);
  const Decomposition* found = std::lower_bound(
      std::begin(kDecompositions), end, code_point,
      [](const Decomposition& entry, char32_t value) { return entry.code < value; });
  return found != end && found->code == code_point ? found : nullptr;
}

// (first, second) -> primary composite, built once from the decomposition table.
const std::unordered_map<uint64_t, char32_t>& Compositions() {
  static const auto* compositions = [] {
    auto* map = new std::unordered_map<uint64_t, char32_t>();
    for (const Decomposition& entry : kDecompositions) {
      if (entry.composes) map->emplace((uint64_t{entry.first} << 32) | entry.second, entry.code);
    }
    return map;
  }();
  return *compositions;
}

// Looks `name` up in a table sorted by name; nullptr when absent.
template <size_t N>
const char* FindEntity(const NamedEntity (&table)[N], std::string_view name) {
  const NamedEntity* end = table + N;
  const NamedEntity* found = std::lower_bound(
      table, end, name, [](const NamedEntity& entry, std::string_view value) { return entry.name < value; });
  return found != end && found->name == name ? found->value : nullptr;
}

// UTF-8 of the generated tables is valid by construction.
std::u32string DecodeTrusted(const char* utf8) {
  absl::StatusOr<std::u32string> decoded = DecodeUtf8(utf8);
  return decoded.ok() ? *std::move(decoded) : std::u32string();
}

// ---- NFC ---------------------------------------------------------------------------------------------

constexpr char32_t kHangulSyllableBase = 0xAC00, kHangulLeadBase = 0x1100, kHangulVowelBase = 0x1161,
                   kHangulTrailBase = 0x11A7;
constexpr char32_t kHangulLeadCount = 19, kHangulVowelCount = 21, kHangulTrailCount = 28;
constexpr char32_t kHangulBlockSize = kHangulVowelCount * kHangulTrailCount;  // 588
constexpr char32_t kHangulSyllableCount = kHangulLeadCount * kHangulBlockSize;

void DecomposeInto(char32_t code_point, std::u32string& out) {
  if (code_point >= kHangulSyllableBase && code_point < kHangulSyllableBase + kHangulSyllableCount) {
    const char32_t index = code_point - kHangulSyllableBase;
    out.push_back(kHangulLeadBase + index / kHangulBlockSize);
    out.push_back(kHangulVowelBase + (index % kHangulBlockSize) / kHangulTrailCount);
    if (index % kHangulTrailCount != 0) out.push_back(kHangulTrailBase + index % kHangulTrailCount);
    return;
  }
  const Decomposition* entry = code_point < 0xC0 ? nullptr : FindDecomposition(code_point);
  if (entry == nullptr) {
    out.push_back(code_point);
    return;
  }
  DecomposeInto(entry->first, out);
  if (entry->second != 0) DecomposeInto(entry->second, out);
}

char32_t Compose(char32_t first, char32_t second) {
  if (first >= kHangulLeadBase && first < kHangulLeadBase + kHangulLeadCount && second >= kHangulVowelBase &&
      second < kHangulVowelBase + kHangulVowelCount) {
    return kHangulSyllableBase +
           ((first - kHangulLeadBase) * kHangulVowelCount + (second - kHangulVowelBase)) * kHangulTrailCount;
  }
  if (first >= kHangulSyllableBase && first < kHangulSyllableBase + kHangulSyllableCount &&
      (first - kHangulSyllableBase) % kHangulTrailCount == 0 && second > kHangulTrailBase &&
      second < kHangulTrailBase + kHangulTrailCount) {
    return first + (second - kHangulTrailBase);
  }
  const auto& compositions = Compositions();
  auto found = compositions.find((uint64_t{first} << 32) | second);
  return found != compositions.end() ? found->second : 0;
}

// ---- ftfy steps ----------------------------------------------------------------------------------------

bool IsAsciiAlphanumeric(char32_t c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
bool IsAsciiDigit(char32_t c) { return c >= '0' && c <= '9'; }
bool IsAsciiHexDigit(char32_t c) { return IsAsciiDigit(c) || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); }
bool IsAsciiLetter(char32_t c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }

std::string AsciiOf(const std::u32string& text, size_t begin, size_t end) {
  std::string out;
  out.reserve(end - begin);
  for (size_t i = begin; i < end; ++i) out.push_back(static_cast<char>(text[i]));
  return out;
}

// ftfy.fixes.unescape_html: HTML_ENTITY_RE = &#?[0-9A-Za-z]{1,24}; replaced through _unescape_fixup.
std::u32string FtfyUnescapeHtml(const std::u32string& text) {
  if (text.find(U'&') == std::u32string::npos) return text;
  std::u32string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] == U'&') {
      const bool numeric = i + 1 < text.size() && text[i + 1] == U'#';
      const size_t name_begin = i + 1 + (numeric ? 1 : 0);
      size_t name_end = name_begin;
      while (name_end < text.size() && IsAsciiAlphanumeric(text[name_end])) ++name_end;
      const size_t length = name_end - name_begin;
      if (length >= 1 && length <= 24 && name_end < text.size() && text[name_end] == U';') {
        const std::u32string match = text.substr(i, name_end + 1 - i);
        if (!numeric) {
          const std::string name = AsciiOf(text, name_begin, name_end + 1);  // with ';'
          const char* value = FindEntity(kHtml5Entities, name);
          if (value == nullptr) value = FindEntity(kFtfyUppercaseEntities, name);
          out += value != nullptr ? DecodeTrusted(value) : match;
        } else {
          // html.unescape of the match, kept only when it consumed the ';'.
          const std::u32string unescaped = HtmlUnescape(match);
          out += unescaped.find(U';') == std::u32string::npos ? unescaped : match;
        }
        i = name_end + 1;
        continue;
      }
    }
    out.push_back(text[i]);
    ++i;
  }
  return out;
}

constexpr struct {
  char32_t code;
  const char32_t* replacement;
} kLatinLigatures[] = {
    {U'\u0132', U"IJ"}, {U'\u0133', U"ij"}, {U'\u0149', U"\u02BCn"}, {U'\u01F1', U"DZ"}, {U'\u01F2', U"Dz"},
    {U'\u01F3', U"dz"}, {U'\u01C4', U"D\u017D"}, {U'\u01C5', U"D\u017E"}, {U'\u01C6', U"d\u017E"},
    {U'\u01C7', U"LJ"}, {U'\u01C8', U"Lj"}, {U'\u01C9', U"lj"}, {U'\u01CA', U"NJ"}, {U'\u01CB', U"Nj"},
    {U'\u01CC', U"nj"}, {U'\uFB00', U"ff"}, {U'\uFB01', U"fi"}, {U'\uFB02', U"fl"}, {U'\uFB03', U"ffi"},
    {U'\uFB04', U"ffl"}, {U'\uFB05', U"\u017Ft"}, {U'\uFB06', U"st"},
};

const std::u32string* WidthReplacement(char32_t code_point) {
  static const auto* map = [] {
    auto* result = new std::unordered_map<char32_t, std::u32string>();
    for (const WidthMapping& entry : kWidthMap) result->emplace(entry.code, DecodeTrusted(entry.replacement));
    return result;
  }();
  auto found = map->find(code_point);
  return found != map->end() ? &found->second : nullptr;
}

bool IsRemovedControl(char32_t c) {
  return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F || (c >= 0x206A && c <= 0x206F) ||
         c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

// The character-level fixes, in ftfy's order, each over the whole text as ftfy applies them:
// fix_c1_controls, fix_latin_ligatures, fix_character_width, uncurl_quotes, fix_line_breaks,
// remove_terminal_escapes, remove_control_chars.
std::u32string FixCharacters(const std::u32string& input) {
  std::u32string text;
  text.reserve(input.size());
  for (char32_t c : input) {  // fix_c1_controls
    text.push_back(c >= 0x80 && c <= 0x9F ? static_cast<char32_t>(kSloppyWindows1252C1[c - 0x80]) : c);
  }
  std::u32string next;
  next.reserve(text.size());
  for (char32_t c : text) {  // fix_latin_ligatures
    const auto* ligature = std::find_if(std::begin(kLatinLigatures), std::end(kLatinLigatures),
                                        [c](const auto& entry) { return entry.code == c; });
    if (ligature != std::end(kLatinLigatures)) {
      next += ligature->replacement;
    } else {
      next.push_back(c);
    }
  }
  text.swap(next);
  next.clear();
  for (char32_t c : text) {  // fix_character_width
    const std::u32string* replacement = (c == 0x3000 || c >= 0xFF01) ? WidthReplacement(c) : nullptr;
    if (replacement != nullptr) {
      next += *replacement;
    } else {
      next.push_back(c);
    }
  }
  text.swap(next);
  for (char32_t& c : text) {  // uncurl_quotes
    if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B)) c = U'\'';
    else if (c >= 0x201C && c <= 0x201F) c = U'"';
  }
  next.clear();
  for (size_t i = 0; i < text.size(); ++i) {  // fix_line_breaks
    const char32_t c = text[i];
    if (c == U'\r') {
      if (i + 1 < text.size() && text[i + 1] == U'\n') ++i;
      next.push_back(U'\n');
    } else if (c == 0x2028 || c == 0x2029 || c == 0x85) {
      next.push_back(U'\n');
    } else {
      next.push_back(c);
    }
  }
  text.swap(next);
  next.clear();
  for (size_t i = 0; i < text.size(); ++i) {  // remove_terminal_escapes: \033\[((?:\d|;)*)([a-zA-Z])
    if (text[i] == 0x1B && i + 1 < text.size() && text[i + 1] == U'[') {
      size_t j = i + 2;
      while (j < text.size() && (text[j] == U';' || InRanges(kDecimalDigits, text[j]))) ++j;
      if (j < text.size() && IsAsciiLetter(text[j])) {
        i = j;
        continue;
      }
    }
    next.push_back(text[i]);
  }
  text.swap(next);
  next.clear();
  for (char32_t c : text) {  // remove_control_chars
    if (!IsRemovedControl(c)) next.push_back(c);
  }
  return next;
}

// ftfy.fix_and_explain on one segment (a line with its '\n'), without fix_encoding.
std::u32string FixSegment(std::u32string text, bool unescape_html) {
  for (int pass = 0; pass < kMaxFixPasses; ++pass) {
    std::u32string fixed = unescape_html ? FtfyUnescapeHtml(text) : text;
    fixed = NormalizeNfc(FixCharacters(fixed));
    if (fixed == text) break;
    text = std::move(fixed);
  }
  return text;
}

// html.unescape's numeric reference rule (_replace_charref); `number` saturates above U+10FFFF.
std::u32string CharacterReference(uint64_t number) {
  for (const CharrefReplacement& entry : kInvalidCharrefs) {
    if (entry.number == number) return std::u32string(1, static_cast<char32_t>(entry.replacement));
  }
  if ((number >= 0xD800 && number <= 0xDFFF) || number > 0x10FFFF) return std::u32string(1, kReplacementCharacter);
  if (InRanges(kInvalidCodepoints, static_cast<char32_t>(number))) return std::u32string();
  return std::u32string(1, static_cast<char32_t>(number));
}

bool EndsNamedReference(char32_t c) {  // the complement of [^\t\n\f <&#;]
  return c == U'\t' || c == U'\n' || c == U'\f' || c == U' ' || c == U'<' || c == U'&' || c == U'#' || c == U';';
}

// html.unescape's named reference rule for the matched name `name` (may end with ';').
std::u32string NamedReference(const std::u32string& name) {
  size_t ascii_prefix = 0;
  while (ascii_prefix < name.size() && name[ascii_prefix] < 0x80) ++ascii_prefix;
  if (ascii_prefix == name.size()) {
    if (const char* value = FindEntity(kHtml5Entities, AsciiOf(name, 0, name.size())); value != nullptr) {
      return DecodeTrusted(value);
    }
  }
  // The longest prefix (of at least 2 characters) that is an entity; only the legacy names without ';'
  // can match here, since a prefix never includes the final ';'.
  for (size_t length = std::min(name.size() - 1, ascii_prefix); length >= 2; --length) {
    if (const char* value = FindEntity(kHtml5Entities, AsciiOf(name, 0, length)); value != nullptr) {
      return DecodeTrusted(value) + name.substr(length);
    }
  }
  return U"&" + name;
}

std::u32string Strip(const std::u32string& text) {
  size_t begin = 0, end = text.size();
  while (begin < end && IsPythonWhitespace(text[begin])) ++begin;
  while (end > begin && IsPythonWhitespace(text[end - 1])) --end;
  return text.substr(begin, end - begin);
}

}  // namespace

bool IsPythonWhitespace(char32_t code_point) { return InRanges(kWhitespace, code_point); }

absl::StatusOr<std::u32string> DecodeUtf8(absl::string_view utf8_text) {
  std::u32string out;
  out.reserve(utf8_text.size());
  const auto* bytes = reinterpret_cast<const unsigned char*>(utf8_text.data());
  const size_t size = utf8_text.size();
  size_t i = 0;
  auto error = [&](size_t offset, absl::string_view reason) {
    return absl::InvalidArgumentError(absl::StrFormat("prompt is not valid UTF-8: byte offset %d (0x%02X): %s",
                                                      offset, static_cast<unsigned>(bytes[offset]), reason));
  };
  while (i < size) {
    const unsigned char lead = bytes[i];
    if (lead < 0x80) {
      out.push_back(lead);
      ++i;
      continue;
    }
    int length;
    char32_t code_point;
    unsigned char second_min = 0x80, second_max = 0xBF;  // Unicode Table 3-7, well-formed sequences
    if (lead >= 0xC2 && lead <= 0xDF) {
      length = 2;
      code_point = lead & 0x1F;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      length = 3;
      code_point = lead & 0x0F;
      if (lead == 0xE0) second_min = 0xA0;  // overlong
      if (lead == 0xED) second_max = 0x9F;  // surrogates
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      length = 4;
      code_point = lead & 0x07;
      if (lead == 0xF0) second_min = 0x90;  // overlong
      if (lead == 0xF4) second_max = 0x8F;  // above U+10FFFF
    } else if (lead >= 0x80 && lead <= 0xBF) {
      return error(i, "continuation byte without a leading byte");
    } else {
      return error(i, "byte never appears in UTF-8");
    }
    if (i + length > size) return error(i, "sequence truncated by the end of the text");
    for (int k = 1; k < length; ++k) {
      const unsigned char continuation = bytes[i + k];
      const unsigned char minimum = k == 1 ? second_min : 0x80, maximum = k == 1 ? second_max : 0xBF;
      if (continuation < minimum || continuation > maximum) {
        return error(i, continuation >= 0x80 && continuation <= 0xBF
                            ? "overlong encoding, surrogate or code point above U+10FFFF"
                            : "sequence cut short by a byte that is not a continuation byte");
      }
      code_point = (code_point << 6) | (continuation & 0x3F);
    }
    out.push_back(code_point);
    i += length;
  }
  return out;
}

std::string EncodeUtf8(const std::u32string& code_points) {
  std::string out;
  out.reserve(code_points.size());
  for (char32_t c : code_points) {
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else if (c < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else if (c < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (c >> 12)));
      out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (c >> 18)));
      out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

std::u32string NormalizeNfc(const std::u32string& text) {
  // Text below U+0300 is already NFC: every combining mark and every second element of a composition
  // is ≥ U+0300, and the precomposed letters below it survive NFC (checked when generating the tables).
  if (std::all_of(text.begin(), text.end(), [](char32_t c) { return c < 0x300; })) return text;
  std::u32string decomposed;
  decomposed.reserve(text.size() + 8);
  for (char32_t c : text) DecomposeInto(c, decomposed);
  // Canonical ordering: stable sort of every run of non-starters by combining class.
  for (size_t i = 0; i < decomposed.size();) {
    if (CombiningClass(decomposed[i]) == 0) {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < decomposed.size() && CombiningClass(decomposed[end]) != 0) ++end;
    std::stable_sort(decomposed.begin() + i, decomposed.begin() + end,
                     [](char32_t a, char32_t b) { return CombiningClass(a) < CombiningClass(b); });
    i = end;
  }
  // Canonical composition: a character joins the last starter unless a character between them has
  // class 0 or a class ≥ its own (it is "blocked").
  std::u32string out;
  out.reserve(decomposed.size());
  size_t starter = std::u32string::npos;
  uint8_t last_class = 0;
  for (char32_t c : decomposed) {
    const uint8_t combining_class = CombiningClass(c);
    if (starter != std::u32string::npos) {
      const bool adjacent = starter + 1 == out.size();
      const bool blocked = !adjacent && (last_class == 0 || last_class >= combining_class);
      if (!blocked) {
        if (const char32_t composite = Compose(out[starter], c); composite != 0) {
          out[starter] = composite;
          continue;
        }
      }
    }
    if (combining_class == 0) starter = out.size();
    out.push_back(c);
    last_class = combining_class;
  }
  return out;
}

std::u32string FtfyFixText(const std::u32string& text) {
  std::u32string out;
  out.reserve(text.size());
  bool unescape_html = true;  // "auto": switched off for good by the first line containing '<'
  size_t position = 0;
  while (position < text.size()) {
    const size_t newline = text.find(U'\n', position);
    const size_t end = newline == std::u32string::npos ? text.size() : newline + 1;
    const std::u32string segment = text.substr(position, end - position);
    if (unescape_html && segment.find(U'<') != std::u32string::npos) unescape_html = false;
    out += FixSegment(segment, unescape_html);
    position = end;
  }
  return out;
}

std::u32string HtmlUnescape(const std::u32string& text) {
  if (text.find(U'&') == std::u32string::npos) return text;
  std::u32string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] != U'&') {
      out.push_back(text[i++]);
      continue;
    }
    const size_t j = i + 1;
    if (j < text.size() && text[j] == U'#') {
      // #[0-9]+;?  then  #[xX][0-9a-fA-F]+;?
      const bool hexadecimal = j + 1 < text.size() && (text[j + 1] == U'x' || text[j + 1] == U'X');
      size_t digits_begin = j + 1;
      size_t digits_end = digits_begin;
      while (digits_end < text.size() && IsAsciiDigit(text[digits_end])) ++digits_end;
      int base = 10;
      if (digits_end == digits_begin && hexadecimal) {
        base = 16;
        digits_begin = j + 2;
        digits_end = digits_begin;
        while (digits_end < text.size() && IsAsciiHexDigit(text[digits_end])) ++digits_end;
      }
      if (digits_end == digits_begin) {  // no reference here
        out.push_back(text[i++]);
        continue;
      }
      uint64_t number = 0;
      for (size_t k = digits_begin; k < digits_end; ++k) {
        const char32_t c = text[k];
        const uint64_t digit = IsAsciiDigit(c) ? c - U'0' : (c | 0x20) - U'a' + 10;
        number = std::min<uint64_t>(number * base + digit, uint64_t{0x7FFFFFFF});  // saturate
      }
      out += CharacterReference(number);
      i = digits_end < text.size() && text[digits_end] == U';' ? digits_end + 1 : digits_end;
      continue;
    }
    // [^\t\n\f <&#;]{1,32};?
    size_t name_end = j;
    while (name_end < text.size() && name_end - j < 32 && !EndsNamedReference(text[name_end])) ++name_end;
    if (name_end == j) {
      out.push_back(text[i++]);
      continue;
    }
    if (name_end < text.size() && text[name_end] == U';') ++name_end;
    out += NamedReference(text.substr(j, name_end - j));
    i = name_end;
  }
  return out;
}

std::u32string CollapseWhitespace(const std::u32string& text) {
  std::u32string out;
  out.reserve(text.size());
  bool in_whitespace = false;
  for (char32_t c : text) {
    if (IsPythonWhitespace(c)) {
      in_whitespace = true;
      continue;
    }
    if (in_whitespace && !out.empty()) out.push_back(U' ');
    in_whitespace = false;
    out.push_back(c);
  }
  return out;
}

absl::StatusOr<std::string> CleanPrompt(absl::string_view utf8_text) {
  absl::StatusOr<std::u32string> decoded = DecodeUtf8(utf8_text);
  if (!decoded.ok()) return decoded.status();
  std::u32string text = FtfyFixText(*decoded);
  text = Strip(HtmlUnescape(HtmlUnescape(text)));
  return EncodeUtf8(CollapseWhitespace(text));
}

}  // namespace zoetrope
