// mapped_file.cpp: POSIX read-only mapping of a whole regular file.
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf/gguf.h"

namespace lowbit {

namespace {
// Closes the descriptor on every path out of open(); the mapping outlives it.
struct FdGuard {
    int fd;
    ~FdGuard() { if (fd >= 0) ::close(fd); }
};

[[noreturn]] void throw_os(int err, const std::string& path, const char* what) {
    throw FileOpenError(err, str(printable(path, 4096), ": ", what, ": ", std::strerror(err)));
}
}  // namespace

std::shared_ptr<const MappedFile> MappedFile::open(const std::string& path) {
    // A NUL would silently cut the path short at the OS call (and open another file).
    if (path.find('\0') != std::string::npos)
        throw ValueError(str("path '", printable(path, 4096), "' contains a NUL byte"));
    // O_NONBLOCK: opening a FIFO must not hang; it is rejected below as not a regular file.
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) throw_os(errno, path, "cannot open");
    FdGuard guard{fd};

    struct stat st;
    if (::fstat(fd, &st) != 0) throw_os(errno, path, "cannot stat");
    if (S_ISDIR(st.st_mode)) throw_os(EISDIR, path, "cannot open as a GGUF file");
    if (!S_ISREG(st.st_mode))
        throw GGUFError(str(printable(path, 4096), ": not a regular file (GGUF files are read through a memory mapping)"));

    const uint64_t size = static_cast<uint64_t>(st.st_size);
    if (size == 0) return std::shared_ptr<const MappedFile>(new MappedFile(path, nullptr, 0));
    if (size > static_cast<uint64_t>(SIZE_MAX))
        throw GGUFError(str(printable(path, 4096), ": file of ", size, " bytes does not fit the address space"));

    void* p = ::mmap(nullptr, static_cast<size_t>(size), PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) throw_os(errno, path, "cannot map");
    return std::shared_ptr<const MappedFile>(new MappedFile(path, static_cast<const uint8_t*>(p), size));
}

MappedFile::~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), static_cast<size_t>(size_));
}

}  // namespace lowbit
