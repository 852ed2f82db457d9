namespace Thaw.Interop.Format;

/// <summary>Element types of snapshot regions: every safetensors dtype. The numeric
/// values are the on-disk codes (docs/FORMAT.md) and never change.</summary>
public enum DType : byte
{
    BOOL = 1,
    U8 = 2,
    I8 = 3,
    I16 = 4,
    U16 = 5,
    I32 = 6,
    U32 = 7,
    I64 = 8,
    U64 = 9,
    F16 = 10,
    BF16 = 11,
    F32 = 12,
    F64 = 13,
    F8_E4M3 = 14,
    F8_E5M2 = 15,
    F8_E8M0 = 16,
    C64 = 17,
    F4 = 18,
    F6_E2M3 = 19,
    F6_E3M2 = 20,
}

public static class DTypes
{
    /// <summary>Bits per element; sub-byte types (F4, F6) pack elements without padding.</summary>
    public static int BitsPerElement(this DType dtype) => dtype switch
    {
        DType.BOOL or DType.U8 or DType.I8 or DType.F8_E4M3 or DType.F8_E5M2 or DType.F8_E8M0 => 8,
        DType.I16 or DType.U16 or DType.F16 or DType.BF16 => 16,
        DType.I32 or DType.U32 or DType.F32 => 32,
        DType.I64 or DType.U64 or DType.F64 or DType.C64 => 64,
        DType.F4 => 4,
        DType.F6_E2M3 or DType.F6_E3M2 => 6,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), $"unknown dtype code {(int)dtype}"),
    };

    public static bool IsDefined(byte code) => Enum.IsDefined(typeof(DType), code);

    /// <summary>The safetensors spelling ("F16", "F8_E4M3", ...), which is also the enum name.</summary>
    public static string Name(this DType dtype) => dtype.ToString();

    public static bool TryParse(string name, out DType dtype)
    {
        foreach (DType candidate in Enum.GetValues<DType>())
        {
            if (candidate.ToString() == name)
            {
                dtype = candidate;
                return true;
            }
        }
        dtype = default;
        return false;
    }

    /// <summary>Byte length of a tensor, or null when the shape overflows or does not fill whole bytes.</summary>
    public static long? ByteLength(this DType dtype, ReadOnlySpan<long> shape)
    {
        try
        {
            checked
            {
                long elements = 1;
                foreach (long dim in shape)
                {
                    if (dim < 0)
                        return null;
                    elements *= dim;
                }
                long bits = elements * dtype.BitsPerElement();
                return bits % 8 == 0 ? bits / 8 : null;
            }
        }
        catch (OverflowException)
        {
            return null;
        }
    }
}
