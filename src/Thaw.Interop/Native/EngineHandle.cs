using System.Runtime.InteropServices;

namespace Thaw.Interop.Native;

/// <summary>Owns one thawcore_engine.</summary>
internal sealed class EngineHandle : SafeHandle
{
    public EngineHandle() : base(nint.Zero, ownsHandle: true) { }

    public override bool IsInvalid => handle == nint.Zero;

    internal static unsafe EngineHandle Create(in Interop.ThawCore.EngineOptions options)
    {
        Interop.ThawCore.EngineOptions copy = options;
        NativeErrors.Check(Interop.ThawCore.EngineCreate(&copy, out nint raw));
        var handle = new EngineHandle();
        handle.SetHandle(raw);
        return handle;
    }

    protected override bool ReleaseHandle()
    {
        Interop.ThawCore.EngineDestroy(handle);
        return true;
    }
}
