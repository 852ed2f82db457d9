using System.Runtime.InteropServices;
using Thaw.Interop.Kv;

namespace Thaw.PyBridge;

/// <summary>KV-cache snapshots through the C ABI (python/thaw_vllm/kv.py).</summary>
public static unsafe partial class Exports
{
    /// <summary>Reads and validates a KV snapshot; its layout and prefixes as JSON released with thaw_free.</summary>
    [UnmanagedCallersOnly(EntryPoint = "thaw_kv_info")]
    public static int KvInfo(byte* path, byte** jsonOut) => Guard(() =>
    {
        *jsonOut = ToNative(KvJson.Describe(KvSnapshot.Read(Text(path, "path"))));
        return 0;
    });
}
