/*
 * sdparity: written for this project (the apache-tvm wheel lacks this header).
 *
 * Byte layout (it must match what libtvm writes into exported modules):
 *   arithmetic and enums: raw little-endian bytes of the (underlying) type;
 *   strings: uint64 length, then the bytes;
 *   sequences (std::vector, ffi::Array): uint64 count, then each element;
 *   maps (std::unordered_map, ffi::Map): uint64 count, then key, value, key, value...;
 *   std::pair: first then second;
 *   DLDataType: uint8 code, uint8 bits, uint16 lanes;  DLDevice: int32 type, int32 id.
 */
#ifndef TVM_SUPPORT_SERIALIZER_H_
#define TVM_SUPPORT_SERIALIZER_H_

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/endian.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tvm {
namespace support {

template <typename T>
struct Serializer<T, std::enable_if_t<std::is_arithmetic_v<T>>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const T& v) {
    T tmp = v;
    if constexpr (!TVM_FFI_IO_NO_ENDIAN_SWAP) ffi::ByteSwap(&tmp, sizeof(T), 1);
    s->Write(static_cast<const void*>(&tmp), sizeof(T));
  }
  static bool Read(Stream* s, T* v) {
    if (s->Read(static_cast<void*>(v), sizeof(T)) != sizeof(T)) return false;
    if constexpr (!TVM_FFI_IO_NO_ENDIAN_SWAP) ffi::ByteSwap(v, sizeof(T), 1);
    return true;
  }
};

template <typename T>
struct Serializer<T, std::enable_if_t<std::is_enum_v<T>>> {
  static constexpr bool enabled = true;
  using U = std::underlying_type_t<T>;
  static void Write(Stream* s, const T& v) { Serializer<U>::Write(s, static_cast<U>(v)); }
  static bool Read(Stream* s, T* v) {
    U u;
    if (!Serializer<U>::Read(s, &u)) return false;
    *v = static_cast<T>(u);
    return true;
  }
};

namespace detail {
inline void WriteBytes(Stream* s, const char* data, size_t n) {
  Serializer<uint64_t>::Write(s, static_cast<uint64_t>(n));
  if (n != 0) s->Write(static_cast<const void*>(data), n);
}
inline bool ReadBytes(Stream* s, std::string* out) {
  uint64_t n;
  if (!Serializer<uint64_t>::Read(s, &n)) return false;
  out->resize(static_cast<size_t>(n));
  return n == 0 || s->Read(static_cast<void*>(&(*out)[0]), out->size()) == out->size();
}
}  // namespace detail

template <>
struct Serializer<std::string> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::string& v) { detail::WriteBytes(s, v.data(), v.size()); }
  static bool Read(Stream* s, std::string* v) { return detail::ReadBytes(s, v); }
};

template <>
struct Serializer<ffi::String> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const ffi::String& v) { detail::WriteBytes(s, v.data(), v.size()); }
  static bool Read(Stream* s, ffi::String* v) {
    std::string tmp;
    if (!detail::ReadBytes(s, &tmp)) return false;
    *v = ffi::String(std::move(tmp));
    return true;
  }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::pair<A, B>& v) {
    Serializer<A>::Write(s, v.first);
    Serializer<B>::Write(s, v.second);
  }
  static bool Read(Stream* s, std::pair<A, B>* v) {
    return Serializer<A>::Read(s, &v->first) && Serializer<B>::Read(s, &v->second);
  }
};

template <typename T>
struct Serializer<std::vector<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::vector<T>& v) {
    Serializer<uint64_t>::Write(s, static_cast<uint64_t>(v.size()));
    s->WriteArray(v.data(), v.size());
  }
  static bool Read(Stream* s, std::vector<T>* v) {
    uint64_t n;
    if (!Serializer<uint64_t>::Read(s, &n)) return false;
    v->resize(static_cast<size_t>(n));
    return s->ReadArray(v->data(), v->size());
  }
};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const ffi::Array<T>& v) {
    Serializer<uint64_t>::Write(s, static_cast<uint64_t>(v.size()));
    for (const T& item : v) Serializer<T>::Write(s, item);
  }
  static bool Read(Stream* s, ffi::Array<T>* v) {
    uint64_t n;
    if (!Serializer<uint64_t>::Read(s, &n)) return false;
    ffi::Array<T> out;
    for (uint64_t i = 0; i < n; ++i) {
      T item;
      if (!Serializer<T>::Read(s, &item)) return false;
      out.push_back(std::move(item));
    }
    *v = std::move(out);
    return true;
  }
};

template <typename K, typename V>
struct Serializer<std::unordered_map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::unordered_map<K, V>& m) {
    Serializer<uint64_t>::Write(s, static_cast<uint64_t>(m.size()));
    for (const auto& kv : m) {
      Serializer<K>::Write(s, kv.first);
      Serializer<V>::Write(s, kv.second);
    }
  }
  static bool Read(Stream* s, std::unordered_map<K, V>* m) {
    uint64_t n;
    if (!Serializer<uint64_t>::Read(s, &n)) return false;
    m->clear();
    for (uint64_t i = 0; i < n; ++i) {
      K k;
      V v;
      if (!Serializer<K>::Read(s, &k) || !Serializer<V>::Read(s, &v)) return false;
      (*m)[std::move(k)] = std::move(v);
    }
    return true;
  }
};

template <typename K, typename V>
struct Serializer<ffi::Map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const ffi::Map<K, V>& m) {
    Serializer<uint64_t>::Write(s, static_cast<uint64_t>(m.size()));
    for (const auto& kv : m) {
      Serializer<K>::Write(s, kv.first);
      Serializer<V>::Write(s, kv.second);
    }
  }
  static bool Read(Stream* s, ffi::Map<K, V>* m) {
    uint64_t n;
    if (!Serializer<uint64_t>::Read(s, &n)) return false;
    ffi::Map<K, V> out;
    for (uint64_t i = 0; i < n; ++i) {
      K k;
      V v;
      if (!Serializer<K>::Read(s, &k) || !Serializer<V>::Read(s, &v)) return false;
      out.Set(std::move(k), std::move(v));
    }
    *m = std::move(out);
    return true;
  }
};

template <>
struct Serializer<DLDataType> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const DLDataType& t) {
    Serializer<uint8_t>::Write(s, t.code);
    Serializer<uint8_t>::Write(s, t.bits);
    Serializer<uint16_t>::Write(s, t.lanes);
  }
  static bool Read(Stream* s, DLDataType* t) {
    return Serializer<uint8_t>::Read(s, &t->code) && Serializer<uint8_t>::Read(s, &t->bits) &&
           Serializer<uint16_t>::Read(s, &t->lanes);
  }
};

template <>
struct Serializer<DLDevice> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const DLDevice& d) {
    Serializer<int32_t>::Write(s, static_cast<int32_t>(d.device_type));
    Serializer<int32_t>::Write(s, d.device_id);
  }
  static bool Read(Stream* s, DLDevice* d) {
    int32_t type;
    if (!Serializer<int32_t>::Read(s, &type) || !Serializer<int32_t>::Read(s, &d->device_id)) {
      return false;
    }
    d->device_type = static_cast<DLDeviceType>(type);
    return true;
  }
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_SERIALIZER_H_
