// Strict safetensors parser and mapped-file reader (see safetensors.h for what is accepted).
//
// The header is read with the JSON pull reader straight into TensorInfo, so no JSON tree is
// built and nothing is reserved from a count the file declares: memory grows only with
// what the header actually contains (bounded by kSafetensorsMaxHeaderSize).
#include "io/safetensors.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <unordered_set>
#include <utility>

#include "core/errors.h"
#include "io/json.h"

namespace llmos {

namespace {

constexpr const char* kMetadataKey = "__metadata__";
constexpr uint64_t kInt64Max = uint64_t(std::numeric_limits<int64_t>::max());

// Names and strings from the file are attacker-controlled: keep messages short and
// printable (a 64 KiB name or a NUL must not make the message itself unusable).
std::string printable(const std::string& s, size_t max_bytes = 120) {
  static const char hex[] = "0123456789abcdef";
  std::string out;
  size_t n = std::min(s.size(), max_bytes);
  // Cut on a UTF-8 boundary so the message stays valid UTF-8.
  while (n < s.size() && n > 0 && (static_cast<unsigned char>(s[n]) & 0xc0) == 0x80) --n;
  for (size_t i = 0; i < n; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += char(c);
    }
  }
  if (n < s.size()) out += "...(" + std::to_string(s.size()) + " bytes)";
  return out;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i == 8 && shape.size() > 10) {
      s += ", ... (" + std::to_string(shape.size()) + " dims)";
      break;
    }
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string range_str(uint64_t b, uint64_t e) {
  return "[" + std::to_string(b) + ", " + std::to_string(e) + "]";
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}

class HeaderParser {
 public:
  HeaderParser(const std::string& path, const char* text, size_t size)
      : path_(path), reader_(text, size) {}

  // Fills tensors (header order) and metadata.
  void run(SafetensorsHeader* out) {
    try {
      parse_top(out);
    } catch (const json::ParseError& e) {
      fail(context_, "invalid JSON in header at header byte " + std::to_string(e.offset()) +
                         " (file offset " + std::to_string(8 + e.offset()) + "): " + e.message());
    }
  }

 private:
  [[noreturn]] void fail(const std::string& field, const std::string& detail) const {
    throw Error(Error::Kind::Safetensors, path_, field, detail);
  }

  std::string found(json::Type t) const { return std::string("found ") + json::type_name(t); }

  void parse_top(SafetensorsHeader* out) {
    json::Type t = reader_.peek();
    if (t != json::Type::Object) fail("", "header must be a JSON object, " + found(t));
    reader_.begin_object();
    std::unordered_set<std::string> seen;
    std::string key;
    while (reader_.next_member(&key)) {
      context_ = printable(key);
      if (!seen.insert(key).second)
        fail(context_, key == kMetadataKey ? "duplicate __metadata__ entry in header"
                                           : "duplicate tensor name in header");
      if (key == kMetadataKey) {
        parse_metadata(&out->metadata);
      } else {
        out->tensors.emplace_back();
        out->tensors.back().name = key;
        parse_tensor(&out->tensors.back());
      }
      context_.clear();
    }
    reader_.finish();
  }

  void parse_metadata(std::map<std::string, std::string>* metadata) {
    json::Type t = reader_.peek();
    if (t != json::Type::Object)
      fail(kMetadataKey, "expected an object of string values, " + found(t));
    reader_.begin_object();
    std::string key;
    while (reader_.next_member(&key)) {
      t = reader_.peek();
      if (t != json::Type::String)
        fail(kMetadataKey, "value of metadata key '" + printable(key) + "' must be a string, " +
                               found(t));
      std::string value = reader_.read_string();
      if (!metadata->emplace(key, std::move(value)).second)
        fail(kMetadataKey, "duplicate metadata key '" + printable(key) + "'");
    }
  }

  void parse_tensor(TensorInfo* info) {
    json::Type t = reader_.peek();
    if (t != json::Type::Object)
      fail(context_, "tensor entry must be an object with dtype, shape and data_offsets, " +
                         found(t));
    reader_.begin_object();
    bool has_dtype = false, has_shape = false, has_offsets = false;
    std::string field;
    while (reader_.next_member(&field)) {
      if (field == "dtype") {
        check_once(&has_dtype, field);
        t = reader_.peek();
        if (t != json::Type::String) fail(context_, "dtype: expected a string, " + found(t));
        std::string name = reader_.read_string();
        if (!dtype_from_name(name, &info->dtype))
          fail(context_, "unknown dtype '" + printable(name) + "'");
      } else if (field == "shape") {
        check_once(&has_shape, field);
        t = reader_.peek();
        if (t != json::Type::Array)
          fail(context_, "shape: expected an array of non-negative integers, " + found(t));
        reader_.begin_array();
        while (reader_.next_item()) {
          uint64_t d = read_u64("shape");
          if (d > kInt64Max)
            fail(context_, "shape: dimension " + std::to_string(d) + " exceeds 2^63-1");
          info->shape.push_back(int64_t(d));
        }
      } else if (field == "data_offsets") {
        check_once(&has_offsets, field);
        t = reader_.peek();
        if (t != json::Type::Array)
          fail(context_, "data_offsets: expected an array of 2 non-negative integers, " + found(t));
        reader_.begin_array();
        size_t n = 0;
        while (reader_.next_item()) {
          if (n == 2) fail(context_, "data_offsets: expected exactly 2 integers, found more");
          (n == 0 ? info->begin : info->end) = read_u64("data_offsets");
          ++n;
        }
        if (n != 2)
          fail(context_, "data_offsets: expected exactly 2 integers, found " + std::to_string(n));
      } else {
        fail(context_, "unknown field '" + printable(field) +
                           "' (a tensor entry has exactly dtype, shape and data_offsets)");
      }
    }
    if (!has_dtype) fail(context_, "missing field 'dtype'");
    if (!has_shape) fail(context_, "missing field 'shape'");
    if (!has_offsets) fail(context_, "missing field 'data_offsets'");
    if (info->begin > info->end)
      fail(context_, "data_offsets " + range_str(info->begin, info->end) + ": begin > end");
  }

  void check_once(bool* seen, const std::string& field) {
    if (*seen) fail(context_, "duplicate field '" + field + "'");
    *seen = true;
  }

  uint64_t read_u64(const char* what) {
    json::Type t = reader_.peek();
    if (t != json::Type::Number)
      fail(context_, std::string(what) + ": expected a non-negative integer, " + found(t));
    std::string lit = reader_.read_number();
    uint64_t v = 0;
    switch (json::to_u64(lit, &v)) {
      case json::IntStatus::Ok: return v;
      case json::IntStatus::NotInteger:
        fail(context_, std::string(what) + ": expected a non-negative integer, found " +
                           printable(lit, 40));
      case json::IntStatus::Negative:
        fail(context_, std::string(what) + ": expected a non-negative integer, found " +
                           printable(lit, 40));
      case json::IntStatus::Overflow:
        fail(context_, std::string(what) + ": integer " + printable(lit, 40) +
                           " does not fit in 64 bits");
    }
    return v;
  }

  const std::string& path_;
  json::Reader reader_;
  std::string context_;  // tensor name (printable) while inside its entry
};

[[noreturn]] void fail(const std::string& path, const std::string& field,
                       const std::string& detail) {
  throw Error(Error::Kind::Safetensors, path, field, detail);
}

// Checks that dtype and shape need exactly end - begin bytes.
void check_size(const std::string& path, const TensorInfo& t) {
  // Product of the non-zero dimensions times the element size must fit in int64 even for an
  // empty tensor, so numel()/strides/numpy never overflow. This implies the reference's
  // running checked product over all dimensions cannot overflow either.
  uint64_t nonzero = dtype_size(t.dtype), numel = 1;
  bool empty = false;
  for (int64_t d : t.shape) {
    if (d == 0) {
      empty = true;
      continue;
    }
    if (!checked_mul(nonzero, uint64_t(d), &nonzero) || nonzero > kInt64Max)
      fail(path, printable(t.name),
           "shape " + shape_str(t.shape) + " with dtype " + dtype_name(t.dtype) +
               " is too large: its non-zero dimensions times the element size exceed 2^63-1 bytes");
    numel *= uint64_t(d);  // cannot overflow: bounded by nonzero
  }
  uint64_t need = empty ? 0 : numel * dtype_size(t.dtype);
  if (t.end - t.begin != need)
    fail(path, printable(t.name),
         "data_offsets " + range_str(t.begin, t.end) + " span " + std::to_string(t.end - t.begin) +
             " bytes but dtype " + dtype_name(t.dtype) + " and shape " + shape_str(t.shape) +
             " need " + std::to_string(need));
}

// Tensors sorted by offsets must tile [0, data_size) exactly, like the reference requires.
void check_layout(const std::string& path, const std::vector<TensorInfo>& tensors,
                  uint64_t data_size) {
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const TensorInfo& x = tensors[a];
    const TensorInfo& y = tensors[b];
    return x.begin != y.begin ? x.begin < y.begin : x.end < y.end;
  });
  uint64_t expected = 0;
  const TensorInfo* prev = nullptr;
  for (size_t i : order) {
    const TensorInfo& t = tensors[i];
    if (t.begin < expected)
      fail(path, printable(t.name),
           "data_offsets " + range_str(t.begin, t.end) + " overlap tensor '" +
               printable(prev->name) + "' at " + range_str(prev->begin, prev->end));
    if (t.begin > expected) {
      if (t.begin > data_size)
        fail(path, printable(t.name),
             "data_offsets " + range_str(t.begin, t.end) + " start past the end of the " +
                 std::to_string(data_size) + "-byte data section");
      fail(path, printable(t.name),
           "data_offsets " + range_str(t.begin, t.end) + " leave a gap: expected the tensor to " +
               "start at " + std::to_string(expected) +
               (prev ? " (end of tensor '" + printable(prev->name) + "')" : " (first tensor)"));
    }
    expected = t.end;
    prev = &t;
  }
  if (expected > data_size)
    fail(path, printable(prev->name),
         "data_offsets " + range_str(prev->begin, prev->end) + " end past the end of the " +
             std::to_string(data_size) + "-byte data section (file truncated?)");
  if (expected < data_size)
    fail(path, "",
         "data section is " + std::to_string(data_size) + " bytes but the tensors cover " +
             std::to_string(expected) + ": " + std::to_string(data_size - expected) +
             " trailing bytes");
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsHeader parse_safetensors(const uint8_t* bytes, size_t size, const std::string& path) {
  if (size < 8)
    fail(path, "", "file is " + std::to_string(size) +
                       " bytes, too small for the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  if (n > kSafetensorsMaxHeaderSize)
    fail(path, "", "header length " + std::to_string(n) + " exceeds the limit of " +
                       std::to_string(kSafetensorsMaxHeaderSize) + " bytes");
  // n <= 1e8, so 8 + n cannot wrap.
  if (8 + n > size)
    fail(path, "", "header length " + std::to_string(n) + " runs past the end of the " +
                       std::to_string(size) + "-byte file");
  if (n == 0) fail(path, "", "header is empty; expected a JSON object");
  if (bytes[8] != '{') fail(path, "", "header must start with '{'");

  SafetensorsHeader h;
  h.data_start = 8 + n;
  HeaderParser(path, reinterpret_cast<const char*>(bytes + 8), size_t(n)).run(&h);
  for (const TensorInfo& t : h.tensors) check_size(path, t);
  check_layout(path, h.tensors, uint64_t(size) - h.data_start);
  return h;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->file_ = MappedFile(path);
  f->header_ = parse_safetensors(f->file_.data(), f->file_.size(), path);
  f->index_.reserve(f->header_.tensors.size());
  for (size_t i = 0; i < f->header_.tensors.size(); ++i)
    f->index_.emplace(f->header_.tensors[i].name, i);
  return f;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

const uint8_t* SafetensorsFile::data(const TensorInfo& t) const {
  return file_.data() + header_.data_start + t.begin;
}

}  // namespace llmos
