// Strict reader for the safetensors format: an 8-byte little-endian header length N, N bytes
// of UTF-8 JSON header, then the data section. parse_safetensors validates a complete file
// image; SafetensorsFile maps a file and validates it once, after which tensor data is read
// straight from the mapping.
//
// Accepts no file that huggingface/safetensors rejects, and additionally rejects (see
// STRICTER_THAN_REFERENCE in tests/test_safetensors_parser.py): duplicate tensor keys and
// duplicate metadata keys (the reference keeps the last), "__metadata__": null, unknown fields
// in a tensor entry, a tensor entry written as an array or a dtype written as {"F32": null}
// (serde accepts both), whitespace before the opening '{', dtypes this runtime does not know
// (F4, F6_*, F8_E8M0, C64, ...), and dimensions above 2^63-1 or whose non-zero product times
// the element size exceeds 2^63-1 (only reachable by zero-element tensors). Trailing JSON
// whitespace after the header object is allowed, as the reference pads with spaces.
// Tensor names are arbitrary UTF-8 (including "", "../x", NUL, very long): they are keys,
// never paths. Tensor data need not be aligned; read it with memcpy or unaligned loads.
// Every error is llmos::Error(Kind::Safetensors, path, field, detail).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/dtype.h"
#include "io/mapped_file.h"

namespace llmos {

// Same limit as the reference implementation.
constexpr uint64_t kSafetensorsMaxHeaderSize = 100000000;

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets in the data section, end - begin = nbytes

  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const;  // cannot overflow: validated at parse time
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in header order
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // 8 + N: file offset of the data section
};

// Parses and validates a complete file image. path is used only in error messages.
SafetensorsHeader parse_safetensors(const uint8_t* bytes, size_t size, const std::string& path);

// An open, validated, mapped file; immutable and thread-safe after open.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const SafetensorsHeader& header() const { return header_; }
  const TensorInfo* find(const std::string& name) const;  // nullptr when absent
  // Pointer into the mapping, valid while this object lives. It may be unaligned, and for an
  // empty tensor it may point one past the end of the mapping.
  const uint8_t* data(const TensorInfo& t) const;
  // Drops the tensor's pages from RSS once its data was copied out (see MappedFile::evict).
  void evict(const TensorInfo& t) const { file_.evict(data(t), size_t(t.end - t.begin)); }
  // Drops the whole pages of [p, p + n), part of one tensor's data, from RSS.
  void evict(const uint8_t* p, size_t n) const { file_.evict(p, n); }

 private:
  SafetensorsFile() = default;

  MappedFile file_;
  SafetensorsHeader header_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace llmos
