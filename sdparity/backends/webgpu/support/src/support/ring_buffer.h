/*
 * sdparity: written for this project (the apache-tvm wheel lacks this header).
 * A FIFO byte buffer (used by the RPC endpoint). Kept linear: unread bytes live in
 * buf_[head_, head_ + size_) and are moved to the front when room is needed.
 */
#ifndef TVM_SUPPORT_RING_BUFFER_H_
#define TVM_SUPPORT_RING_BUFFER_H_

#include <tvm/ffi/error.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace tvm {
namespace support {

class RingBuffer {
 public:
  size_t bytes_available() const { return size_; }

  /*! \brief Make room for n more bytes after the unread ones. */
  void Reserve(size_t n) {
    if (head_ + size_ + n <= buf_.size()) return;
    if (size_ != 0 && head_ != 0) std::memmove(buf_.data(), buf_.data() + head_, size_);
    head_ = 0;
    if (size_ + n > buf_.size()) buf_.resize(std::max(size_ + n, buf_.size() * 2));
  }
  void Write(const void* data, size_t n) {
    Reserve(n);
    if (n != 0) std::memcpy(buf_.data() + head_ + size_, data, n);
    size_ += n;
  }
  void Read(void* data, size_t n) {
    TVM_FFI_ICHECK_LE(n, size_);
    if (n != 0) std::memcpy(data, buf_.data() + head_, n);
    Consume(n);
  }
  /*! \brief Hand up to max_nbytes unread bytes to fsend(ptr, n) -> consumed; drop those. */
  template <typename F>
  size_t ReadWithCallback(F fsend, size_t max_nbytes) {
    size_t n = std::min(max_nbytes, size_);
    size_t done = n == 0 ? 0 : fsend(static_cast<const void*>(buf_.data() + head_), n);
    Consume(done);
    return done;
  }
  /*! \brief Let frecv(ptr, n) -> written fill up to max_nbytes at the end. */
  template <typename F>
  size_t WriteWithCallback(F frecv, size_t max_nbytes) {
    Reserve(max_nbytes);
    size_t done = frecv(static_cast<void*>(buf_.data() + head_ + size_), max_nbytes);
    size_ += done;
    return done;
  }

 private:
  void Consume(size_t n) {
    head_ += n;
    size_ -= n;
    if (size_ == 0) head_ = 0;
  }
  std::vector<char> buf_;
  size_t head_ = 0;
  size_t size_ = 0;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_RING_BUFFER_H_
