namespace Thaw.Interop.Format;

/// <summary>One region of a snapshot: a tensor's name, type, shape and where its bytes are.</summary>
/// <param name="Offset">Byte offset of the region from the start of the data section.</param>
/// <param name="Length">Byte length of the region (the tensor's bytes, no padding).</param>
/// <param name="Crc32C">CRC32C of the region's bytes.</param>
public sealed record TensorEntry(string Name, DType DType, long[] Shape, long Offset, long Length, uint Crc32C)
{
    /// <summary>The shape as text, e.g. <c>[4096, 128]</c>.</summary>
    public string ShapeText => "[" + string.Join(", ", Shape) + "]";
}

/// <summary>A tensor to be written: its name, type and shape.</summary>
public sealed record TensorSpec(string Name, DType DType, long[] Shape);
