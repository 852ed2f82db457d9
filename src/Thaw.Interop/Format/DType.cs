namespace Thaw.Interop.Format;

/// <summary>Element types of snapshot regions: every safetensors dtype. The numeric
/// values are the on-disk codes (docs/FORMAT.md) and never change.</summary>
public enum DType : byte
{
    /// <summary>Boolean, one byte.</summary>
    BOOL = 1,
    /// <summary>Unsigned 8-bit integer.</summary>
    U8 = 2,
    /// <summary>Signed 8-bit integer.</summary>
    I8 = 3,
    /// <summary>Signed 16-bit integer.</summary>
    I16 = 4,
    /// <summary>Unsigned 16-bit integer.</summary>
    U16 = 5,
    /// <summary>Signed 32-bit integer.</summary>
    I32 = 6,
    /// <summary>Unsigned 32-bit integer.</summary>
    U32 = 7,
    /// <summary>Signed 64-bit integer.</summary>
    I64 = 8,
    /// <summary>Unsigned 64-bit integer.</summary>
    U64 = 9,
    /// <summary>IEEE half precision.</summary>
    F16 = 10,
    /// <summary>bfloat16.</summary>
    BF16 = 11,
    /// <summary>IEEE single precision.</summary>
    F32 = 12,
    /// <summary>IEEE double precision.</summary>
    F64 = 13,
    /// <summary>8-bit float, 4 exponent and 3 mantissa bits.</summary>
    F8_E4M3 = 14,
    /// <summary>8-bit float, 5 exponent and 2 mantissa bits.</summary>
    F8_E5M2 = 15,
    /// <summary>8-bit scale (exponent only), as in MX formats.</summary>
    F8_E8M0 = 16,
    /// <summary>Complex of two single-precision floats.</summary>
    C64 = 17,
    /// <summary>4-bit float (E2M1), two elements a byte.</summary>
    F4 = 18,
    /// <summary>6-bit float, 2 exponent and 3 mantissa bits.</summary>
    F6_E2M3 = 19,
    /// <summary>6-bit float, 3 exponent and 2 mantissa bits.</summary>
    F6_E3M2 = 20,
}

/// <summary>Sizes, names and codes of <see cref="DType"/>.</summary>
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

    /// <summary>Whether <paramref name="code"/> is the on-disk code of a known dtype.</summary>
    public static bool IsDefined(byte code) => Enum.IsDefined(typeof(DType), code);

    /// <summary>The safetensors spelling ("F16", "F8_E4M3", ...), which is also the enum name.</summary>
    public static string Name(this DType dtype) => dtype.ToString();

    /// <summary>Parses the safetensors spelling ("F16", "BF16", ...), case-sensitive.</summary>
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
