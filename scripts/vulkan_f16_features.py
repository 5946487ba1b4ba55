"""Which float16 features the Vulkan driver reports, per physical device (issue 13: why Dawn
offers no `shader-f16` on the lent NVIDIA card). Python + ctypes over the Vulkan loader only
(the GPU machine has no vulkaninfo and no Vulkan headers).

Dawn enables WebGPU's `shader-f16` on Vulkan only when the driver reports shaderFloat16,
storageBuffer16BitAccess and uniformAndStorageBuffer16BitAccess, and (in the Dawn releases
that require it) storageInputOutput16; this prints those four.

    python3 scripts/vulkan_f16_features.py      (exit status 2 without a Vulkan loader/driver)
"""

import ctypes
import json
import sys

VK_SUCCESS = 0
S_APP_INFO, S_INSTANCE_INFO = 0, 1
S_FEATURES2, S_F16_INT8, S_16BIT_STORAGE = 1000059000, 1000082000, 1000083000
S_PROPERTIES2 = 1000059001


class AppInfo(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("pApplicationName", ctypes.c_char_p),
                ("applicationVersion", ctypes.c_uint32), ("pEngineName", ctypes.c_char_p),
                ("engineVersion", ctypes.c_uint32), ("apiVersion", ctypes.c_uint32)]


class InstanceInfo(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("flags", ctypes.c_uint32),
                ("pApplicationInfo", ctypes.POINTER(AppInfo)), ("enabledLayerCount", ctypes.c_uint32),
                ("ppEnabledLayerNames", ctypes.c_void_p), ("enabledExtensionCount", ctypes.c_uint32),
                ("ppEnabledExtensionNames", ctypes.c_void_p)]


class Storage16(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("storageBuffer16BitAccess", ctypes.c_uint32),
                ("uniformAndStorageBuffer16BitAccess", ctypes.c_uint32), ("storagePushConstant16", ctypes.c_uint32),
                ("storageInputOutput16", ctypes.c_uint32)]


class Float16Int8(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("shaderFloat16", ctypes.c_uint32),
                ("shaderInt8", ctypes.c_uint32)]


class Features2(ctypes.Structure):  # VkPhysicalDeviceFeatures is 55 VkBool32
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("features", ctypes.c_uint32 * 55)]


class Properties2(ctypes.Structure):  # only the head of VkPhysicalDeviceProperties is read
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("apiVersion", ctypes.c_uint32),
                ("driverVersion", ctypes.c_uint32), ("vendorID", ctypes.c_uint32), ("deviceID", ctypes.c_uint32),
                ("deviceType", ctypes.c_int), ("deviceName", ctypes.c_char * 256), ("rest", ctypes.c_byte * 4096)]


def main() -> int:
    try:
        vk = ctypes.CDLL("libvulkan.so.1")
    except OSError as e:
        print(f"vulkan_f16_features: no Vulkan loader ({e})", file=sys.stderr)
        return 2
    app = AppInfo(S_APP_INFO, None, b"sdparity", 1, b"sdparity", 1, (1 << 22) | (1 << 12))  # Vulkan 1.1
    info = InstanceInfo(S_INSTANCE_INFO, None, 0, ctypes.pointer(app), 0, None, 0, None)
    inst = ctypes.c_void_p()
    if vk.vkCreateInstance(ctypes.byref(info), None, ctypes.byref(inst)) != VK_SUCCESS:
        print("vulkan_f16_features: vkCreateInstance failed (no driver?)", file=sys.stderr)
        return 2
    n = ctypes.c_uint32()
    vk.vkEnumeratePhysicalDevices(inst, ctypes.byref(n), None)
    devs = (ctypes.c_void_p * n.value)()
    vk.vkEnumeratePhysicalDevices(inst, ctypes.byref(n), devs)
    out = []
    for d in devs:
        s16 = Storage16(S_16BIT_STORAGE, None)
        f16 = Float16Int8(S_F16_INT8, ctypes.cast(ctypes.pointer(s16), ctypes.c_void_p))
        f2 = Features2(S_FEATURES2, ctypes.cast(ctypes.pointer(f16), ctypes.c_void_p))
        vk.vkGetPhysicalDeviceFeatures2(ctypes.c_void_p(d), ctypes.byref(f2))
        p2 = Properties2(S_PROPERTIES2, None)
        vk.vkGetPhysicalDeviceProperties2(ctypes.c_void_p(d), ctypes.byref(p2))
        out.append({"device": p2.deviceName.decode(), "vendor_id": hex(p2.vendorID),
                    "api_version": f"{p2.apiVersion >> 22}.{(p2.apiVersion >> 12) & 0x3FF}.{p2.apiVersion & 0xFFF}",
                    **{k: bool(getattr(f16, k)) for k in ("shaderFloat16", "shaderInt8")},
                    **{k: bool(getattr(s16, k)) for k, _ in Storage16._fields_[2:]}})
    vk.vkDestroyInstance(inst, None)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
