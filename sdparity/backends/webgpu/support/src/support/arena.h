/*
 * sdparity: written for this project (the apache-tvm wheel lacks this header).
 * A bump allocator: many small allocations, all released at once by RecycleAll().
 */
#ifndef TVM_SUPPORT_ARENA_H_
#define TVM_SUPPORT_ARENA_H_

#include <algorithm>
#include <cstddef>
#include <memory>
#include <vector>

namespace tvm {
namespace support {

class Arena {
 public:
  /*! \brief Room for count objects of trivial type T, valid until RecycleAll(). */
  template <typename T>
  T* allocate_(size_t count = 1) {
    return static_cast<T*>(Alloc(sizeof(T) * count, alignof(T)));
  }
  template <typename T>
  T* make() {
    return new (allocate_<T>(1)) T();
  }
  void RecycleAll() {
    if (blocks_.size() > 1) blocks_.erase(blocks_.begin() + 1, blocks_.end());
    used_ = 0;
  }

 private:
  static constexpr size_t kBlock = 16 * 1024;
  struct Block {
    std::unique_ptr<char[]> data;
    size_t size;
  };
  void* Alloc(size_t nbytes, size_t align) {
    if (!blocks_.empty()) {
      size_t start = (used_ + align - 1) / align * align;
      if (start + nbytes <= blocks_.back().size) {
        used_ = start + nbytes;
        return blocks_.back().data.get() + start;
      }
    }
    // new[] memory is aligned for any fundamental type
    size_t size = std::max(kBlock, nbytes);
    blocks_.push_back(Block{std::unique_ptr<char[]>(new char[size]), size});
    used_ = nbytes;
    return blocks_.back().data.get();
  }
  std::vector<Block> blocks_;
  size_t used_ = 0;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_ARENA_H_
