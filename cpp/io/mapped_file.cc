// Read-only mmap of a file (see mapped_file.h).
#include "io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "core/errors.h"

namespace llmos {

namespace {

[[noreturn]] void throw_io(const std::string& path, const std::string& what, int err) {
  throw Error(Error::Kind::Io, path, "", what + ": " + std::strerror(err));
}

// Closes the descriptor on every exit path; the mapping stays valid after close.
struct FdGuard {
  int fd;
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

MappedFile::MappedFile(const std::string& path) : path_(path) {
  // O_NONBLOCK so that opening a FIFO by mistake fails below instead of hanging in open().
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) throw_io(path, "cannot open file", errno);
  FdGuard guard{fd};

  struct stat st;
  if (::fstat(fd, &st) != 0) throw_io(path, "cannot stat file", errno);
  if (S_ISDIR(st.st_mode)) throw_io(path, "cannot map file", EISDIR);
  if (!S_ISREG(st.st_mode))
    throw Error(Error::Kind::Io, path, "", "cannot map file: not a regular file");
  if (st.st_size < 0 ||
      static_cast<unsigned long long>(st.st_size) > std::numeric_limits<size_t>::max())
    throw Error(Error::Kind::Io, path, "", "cannot map file: size out of range");
  size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) return;  // mmap of length 0 is EINVAL; an empty file simply has no bytes

  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) throw_io(path, "cannot mmap " + std::to_string(size) + " bytes", errno);
  data_ = static_cast<const uint8_t*>(p);
  size_ = size;
}

MappedFile::~MappedFile() { release(); }

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)), data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

void MappedFile::release() noexcept {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

}  // namespace llmos

namespace llmos {

void MappedFile::evict(const uint8_t* p, size_t n) const noexcept {
  if (!data_ || n == 0 || p < data_ || p + n > data_ + size_) return;
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  // Only whole pages inside the range: a neighbour sharing a page may still be needed.
  const uintptr_t begin = (uintptr_t(p) + page - 1) & ~(page - 1);
  const uintptr_t end = (uintptr_t(p) + n) & ~(page - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace llmos
