namespace Thaw.Interop.Native;

/// <summary>CRC32C through the core, so the C# and C sides share one implementation.</summary>
public static class Crc32C
{
    /// <summary>Extends a running CRC32C (start from 0) with <paramref name="data"/>.</summary>
    public static unsafe uint Append(uint crc, ReadOnlySpan<byte> data)
    {
        fixed (byte* p = data)
            return Interop.ThawCore.Crc32C(crc, p, (nuint)data.Length);
    }

    /// <summary>The CRC32C of <paramref name="data"/>.</summary>
    public static uint Compute(ReadOnlySpan<byte> data) => Append(0, data);
}
