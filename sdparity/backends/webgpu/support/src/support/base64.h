/*
 * sdparity: written for this project (the apache-tvm wheel lacks this header).
 * Standard base64 (RFC 4648 alphabet, '=' padding) layered over another Stream.
 */
#ifndef TVM_SUPPORT_BASE64_H_
#define TVM_SUPPORT_BASE64_H_

#include <tvm/ffi/error.h>
#include <tvm/support/io.h>

#include <cctype>
#include <cstdint>

namespace tvm {
namespace support {

namespace base64 {
inline const char* Alphabet() {
  return "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}
inline int Decode(int c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
}  // namespace base64

/*! \brief Encodes what is written; call Finish() once at the end to flush and pad. */
class Base64OutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;
  explicit Base64OutStream(Stream* out) : out_(out) {}

  size_t Read(void*, size_t) final { return 0; }
  size_t Write(const void* ptr, size_t size) final {
    const uint8_t* p = static_cast<const uint8_t*>(ptr);
    for (size_t i = 0; i < size; ++i) {
      group_[n_++] = p[i];
      if (n_ == 3) EmitGroup();
    }
    return size;
  }
  void Finish() {
    if (n_ != 0) EmitGroup();
  }

 private:
  void EmitGroup() {
    const char* a = base64::Alphabet();
    uint32_t v = (uint32_t(group_[0]) << 16) | (uint32_t(n_ > 1 ? group_[1] : 0) << 8) |
                 uint32_t(n_ > 2 ? group_[2] : 0);
    char chars[4] = {a[(v >> 18) & 63], a[(v >> 12) & 63], n_ > 1 ? a[(v >> 6) & 63] : '=',
                     n_ > 2 ? a[v & 63] : '='};
    out_->Write(static_cast<const void*>(chars), 4);
    n_ = 0;
  }
  Stream* out_;
  uint8_t group_[3] = {0, 0, 0};
  int n_ = 0;
};

/*! \brief Decodes base64 text from another stream; whitespace is skipped. */
class Base64InStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;
  explicit Base64InStream(Stream* in) : in_(in) {}

  /*! \brief Kept for API compatibility: decoding starts lazily, whitespace is skipped. */
  void InitPosition() {}

  size_t Read(void* ptr, size_t size) final {
    uint8_t* p = static_cast<uint8_t*>(ptr);
    size_t done = 0;
    while (done < size) {
      if (pos_ == len_ && !DecodeGroup()) break;
      p[done++] = buf_[pos_++];
    }
    return done;
  }
  size_t Write(const void*, size_t) final { return 0; }

 private:
  int NextChar() {
    char c;
    do {
      if (in_->Read(static_cast<void*>(&c), 1) != 1) return -1;
    } while (std::isspace(static_cast<unsigned char>(c)));
    return c;
  }
  bool DecodeGroup() {
    if (ended_) return false;
    int c[4];
    for (int i = 0; i < 4; ++i) {
      c[i] = NextChar();
      if (c[i] < 0) {
        TVM_FFI_ICHECK_EQ(i, 0) << "truncated base64 input";
        ended_ = true;
        return false;
      }
    }
    uint32_t v = 0;
    int valid = 0;
    for (int i = 0; i < 4; ++i) {
      int d = c[i] == '=' ? 0 : base64::Decode(c[i]);
      TVM_FFI_ICHECK(d >= 0) << "invalid base64 character " << c[i];
      if (c[i] != '=') valid = i + 1;
      v = (v << 6) | uint32_t(d);
    }
    len_ = valid == 4 ? 3 : (valid == 3 ? 2 : 1);
    if (valid < 4) ended_ = true;
    buf_[0] = uint8_t(v >> 16);
    buf_[1] = uint8_t(v >> 8);
    buf_[2] = uint8_t(v);
    pos_ = 0;
    return true;
  }
  Stream* in_;
  uint8_t buf_[3] = {0, 0, 0};
  size_t pos_ = 0, len_ = 0;
  bool ended_ = false;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_BASE64_H_
