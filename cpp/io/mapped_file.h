// Read-only memory mapping of a whole file (RAII). A 0-byte file is valid and maps to
// nothing (data() == nullptr, size() == 0). Failures throw llmos::Error with Kind::Io, the
// path, the step that failed and strerror.
//
// The mapping is shared with the page cache: if another process truncates the file while it
// is mapped, touching the lost pages raises SIGBUS. Model files are expected not to change
// while loaded.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace llmos {

class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Drops the resident pages of [p, p + n) from this process (they stay in the page cache
  // and read back on access): a loader that copied a tensor out no longer pays for it in RSS.
  void evict(const uint8_t* p, size_t n) const noexcept;

 private:
  void release() noexcept;

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace llmos
