/*
 * sdparity: written for this project. The apache-tvm wheel ships the TVM runtime sources
 * but not this header; the web runtime (the .cc files under tvm/web/emcc) needs it to compile.
 *
 * A byte stream with typed helpers. Typed reads and writes go through Serializer<T>
 * (tvm/support/serializer.h), whose byte layout must match what libtvm writes.
 */
#ifndef TVM_SUPPORT_IO_H_
#define TVM_SUPPORT_IO_H_

#include <tvm/ffi/endian.h>

#include <cstddef>
#include <type_traits>

namespace tvm {
namespace support {

/*! \brief Serializer<T>::Write(Stream*, const T&) and ::Read(Stream*, T*) -> bool. */
template <typename T, typename Enable = void>
struct Serializer;

class Stream {
 public:
  virtual ~Stream() = default;
  /*! \return the number of bytes read (less than size at the end of the stream) */
  virtual size_t Read(void* ptr, size_t size) = 0;
  virtual size_t Write(const void* ptr, size_t size) = 0;

  template <typename T>
  void Write(const T& value) {
    Serializer<T>::Write(this, value);
  }
  template <typename T>
  bool Read(T* out) {
    return Serializer<T>::Read(this, out);
  }
  template <typename T>
  void WriteArray(const T* data, size_t n) {
    if constexpr (std::is_arithmetic_v<T> && TVM_FFI_IO_NO_ENDIAN_SWAP) {
      if (n != 0) Write(static_cast<const void*>(data), n * sizeof(T));
    } else {
      for (size_t i = 0; i < n; ++i) Serializer<T>::Write(this, data[i]);
    }
  }
  template <typename T>
  bool ReadArray(T* data, size_t n) {
    if constexpr (std::is_arithmetic_v<T> && TVM_FFI_IO_NO_ENDIAN_SWAP) {
      return n == 0 || Read(static_cast<void*>(data), n * sizeof(T)) == n * sizeof(T);
    } else {
      for (size_t i = 0; i < n; ++i) {
        if (!Serializer<T>::Read(this, data + i)) return false;
      }
      return true;
    }
  }
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_IO_H_
