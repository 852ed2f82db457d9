using System.Buffers.Binary;
using System.Text;
using Thaw.Interop.Native;

namespace Thaw.Interop.Format;

/// <summary>Parses and validates a snapshot header. Reads only the header; executes
/// nothing; every size is checked against the file before anything is allocated.</summary>
public static class SnapshotReader
{
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <exception cref="FileNotFoundException">No file at <paramref name="path"/>.</exception>
    /// <exception cref="ThawFormatException">The file is not a valid v1 snapshot.</exception>
    public static Snapshot Read(string path)
    {
        using var file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        long fileLength = RandomAccess.GetLength(file);
        if (fileLength < SnapshotFormat.PreambleSize)
            throw new ThawFormatException(path, $"truncated: {fileLength} bytes is shorter than the {SnapshotFormat.PreambleSize}-byte preamble");
        Span<byte> preamble = stackalloc byte[SnapshotFormat.PreambleSize];
        ReadExactly(path, file, preamble, 0);
        long headerLength = ValidatePreambleSize(path, preamble, fileLength);
        byte[] header = new byte[headerLength];
        ReadExactly(path, file, header, 0);
        return Parse(path, header, fileLength);
    }

    /// <summary>Parses a header already in memory (the first header_length bytes of the file).</summary>
    public static Snapshot Parse(string path, ReadOnlySpan<byte> header, long fileLength)
    {
        if (header.Length < SnapshotFormat.PreambleSize)
            throw new ThawFormatException(path, "truncated: header shorter than the preamble");
        long headerLength = ValidatePreambleSize(path, header, fileLength);
        if (header.Length < headerLength)
            throw new ThawFormatException(path, $"truncated: header needs {headerLength} bytes, {header.Length} given");
        header = header[..(int)headerLength];

        uint recorded = BinaryPrimitives.ReadUInt32LittleEndian(header[SnapshotFormat.HeaderCrcOffset..]);
        uint actual = HeaderCrc(header);
        if (recorded != actual)
            throw new ThawFormatException(path, $"header is corrupt: CRC32C 0x{actual:x8}, recorded 0x{recorded:x8}");

        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(header[12..]);
        long dataOffset = (long)Math.Min(BinaryPrimitives.ReadUInt64LittleEndian(header[24..]), long.MaxValue);
        long dataLength = (long)Math.Min(BinaryPrimitives.ReadUInt64LittleEndian(header[32..]), long.MaxValue);
        uint tensorCount = BinaryPrimitives.ReadUInt32LittleEndian(header[40..]);
        uint metadataCount = BinaryPrimitives.ReadUInt32LittleEndian(header[44..]);
        uint tpRank = BinaryPrimitives.ReadUInt32LittleEndian(header[48..]);
        uint tpWorldSize = BinaryPrimitives.ReadUInt32LittleEndian(header[52..]);
        uint reserved = BinaryPrimitives.ReadUInt32LittleEndian(header[60..]);

        if (flags != 0)
            throw new ThawFormatException(path, $"unknown flags 0x{flags:x8} (this reader knows none)");
        if (reserved != 0)
            throw new ThawFormatException(path, "reserved preamble field is not zero");
        if (dataOffset % SnapshotFormat.Alignment != 0 || dataOffset < headerLength)
            throw new ThawFormatException(path, $"data offset {dataOffset} is not a multiple of 4096 at or after the header's end ({headerLength})");
        if (dataLength % SnapshotFormat.Alignment != 0)
            throw new ThawFormatException(path, $"data length {dataLength} is not a multiple of 4096");
        if (dataOffset > fileLength || dataLength != fileLength - dataOffset)
            throw new ThawFormatException(path, $"truncated or extended: the header describes {dataOffset}+{dataLength} bytes, the file has {fileLength}");
        if (tpWorldSize == 0 || tpRank >= tpWorldSize || tpWorldSize > 1_000_000)
            throw new ThawFormatException(path, $"tensor-parallel rank {tpRank} of world size {tpWorldSize} is impossible");

        var cursor = new Cursor(path, header[SnapshotFormat.PreambleSize..]);
        if (metadataCount > cursor.Remaining / SnapshotFormat.MinMetadataEntryBytes)
            throw new ThawFormatException(path, $"metadata count {metadataCount} cannot fit in a {headerLength}-byte header");
        var metadata = new Dictionary<string, string>((int)metadataCount, StringComparer.Ordinal);
        for (uint i = 0; i < metadataCount; i++)
        {
            string key = cursor.String(cursor.U16(), SnapshotFormat.MaxMetadataKeyBytes, $"metadata key {i}");
            if (NameRules.Problem(key) is string problem)
                throw new ThawFormatException(path, $"metadata key {i} {NameRules.Quote(key)} {problem}");
            string value = cursor.String(cursor.U32(), SnapshotFormat.MaxMetadataValueBytes, $"metadata value '{key}'");
            if (!metadata.TryAdd(key, value))
                throw new ThawFormatException(path, $"metadata key '{key}' is repeated");
        }

        if (tensorCount > cursor.Remaining / SnapshotFormat.MinTensorEntryBytes)
            throw new ThawFormatException(path, $"tensor count {tensorCount} cannot fit in a {headerLength}-byte header");
        var tensors = new List<TensorEntry>((int)tensorCount);
        var names = new HashSet<string>(StringComparer.Ordinal);
        long previousEnd = 0;
        for (uint i = 0; i < tensorCount; i++)
        {
            string name = cursor.String(cursor.U16(), SnapshotFormat.MaxNameBytes, $"tensor {i} name");
            if (NameRules.Problem(name) is string problem)
                throw new ThawFormatException(path, $"tensor {i}: name {NameRules.Quote(name)} {problem}");
            if (!names.Add(name))
                throw new ThawFormatException(path, $"tensor {i}: name '{name}' is repeated");
            byte code = cursor.U8();
            if (!DTypes.IsDefined(code))
                throw new ThawFormatException(path, $"tensor '{name}': unknown dtype code {code}");
            var dtype = (DType)code;
            int ndim = cursor.U8();
            if (ndim > SnapshotFormat.MaxDimensions)
                throw new ThawFormatException(path, $"tensor '{name}': {ndim} dimensions (at most {SnapshotFormat.MaxDimensions})");
            var shape = new long[ndim];
            for (int d = 0; d < ndim; d++)
            {
                ulong dim = cursor.U64();
                if (dim > long.MaxValue)
                    throw new ThawFormatException(path, $"tensor '{name}': dimension {d} is {dim}");
                shape[d] = (long)dim;
            }
            ulong offset = cursor.U64();
            ulong length = cursor.U64();
            uint crc = cursor.U32();
            long? expected = dtype.ByteLength(shape);
            if (expected is null)
                throw new ThawFormatException(path, $"tensor '{name}': shape [{string.Join(", ", shape)}] of {dtype} has no whole byte length");
            if (length != (ulong)expected.Value)
                throw new ThawFormatException(path, $"tensor '{name}': length {length} disagrees with {dtype} [{string.Join(", ", shape)}] ({expected} bytes)");
            if (offset % SnapshotFormat.Alignment != 0)
                throw new ThawFormatException(path, $"tensor '{name}': offset {offset} is not 4096-aligned");
            if (offset < (ulong)previousEnd || offset > (ulong)dataLength || length > (ulong)dataLength - offset)
                throw new ThawFormatException(path, $"tensor '{name}': region {offset}+{length} overlaps the one before it or leaves the data section ({dataLength} bytes)");
            previousEnd = (long)(offset + length);
            tensors.Add(new TensorEntry(name, dtype, shape, (long)offset, (long)length, crc));
        }
        if (cursor.Remaining != 0)
            throw new ThawFormatException(path, $"{cursor.Remaining} unexplained bytes at the end of the header");
        if (SnapshotFormat.AlignUp(previousEnd) != dataLength)
            throw new ThawFormatException(path, $"data section is {dataLength} bytes, the regions end at {previousEnd}");

        return new Snapshot(path, fileLength, dataOffset, dataLength, (int)tpRank, (int)tpWorldSize, metadata, tensors) { HeaderCrc32C = recorded };
    }

    internal static uint HeaderCrc(ReadOnlySpan<byte> header)
    {
        Span<byte> zero = stackalloc byte[4];
        uint crc = Crc32C.Compute(header[..SnapshotFormat.HeaderCrcOffset]);
        crc = Crc32C.Append(crc, zero);
        return Crc32C.Append(crc, header[(SnapshotFormat.HeaderCrcOffset + 4)..]);
    }

    private static long ValidatePreambleSize(string path, ReadOnlySpan<byte> preamble, long fileLength)
    {
        if (!preamble[..8].SequenceEqual(SnapshotFormat.Magic))
        {
            string seen = Convert.ToHexString(preamble[..8]);
            throw new ThawFormatException(path, $"not a Thaw snapshot (magic bytes {seen}, expected \"THAWSNAP\")");
        }
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(preamble[8..]);
        if (version != SnapshotFormat.Version)
            throw new ThawFormatException(path, $"format version {version} is not supported (this reader knows version {SnapshotFormat.Version})");
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(preamble[16..]);
        if (headerLength < SnapshotFormat.PreambleSize || headerLength > SnapshotFormat.MaxHeaderBytes)
            throw new ThawFormatException(path, $"header length {headerLength} is out of range ({SnapshotFormat.PreambleSize}..{SnapshotFormat.MaxHeaderBytes})");
        if (headerLength > (ulong)fileLength)
            throw new ThawFormatException(path, $"truncated: the header needs {headerLength} bytes, the file has {fileLength}");
        return (long)headerLength;
    }

    private static void ReadExactly(string path, Microsoft.Win32.SafeHandles.SafeFileHandle file, Span<byte> buffer, long offset)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n = RandomAccess.Read(file, buffer[done..], offset + done);
            if (n == 0)
                throw new ThawFormatException(path, "file shrank while its header was read");
            done += n;
        }
    }

    private ref struct Cursor
    {
        private readonly string _path;
        private ReadOnlySpan<byte> _rest;
        private readonly int _start;

        public Cursor(string path, ReadOnlySpan<byte> table)
        {
            _path = path;
            _rest = table;
            _start = table.Length;
        }

        public readonly int Remaining => _rest.Length;

        private ReadOnlySpan<byte> Take(int count, string what)
        {
            if (count > _rest.Length)
                throw new ThawFormatException(_path, $"header ends inside {what} (at table byte {_start - _rest.Length})");
            ReadOnlySpan<byte> taken = _rest[..count];
            _rest = _rest[count..];
            return taken;
        }

        public byte U8() => Take(1, "a tensor entry")[0];
        public ushort U16() => BinaryPrimitives.ReadUInt16LittleEndian(Take(2, "a length field"));
        public uint U32() => BinaryPrimitives.ReadUInt32LittleEndian(Take(4, "a 32-bit field"));
        public ulong U64() => BinaryPrimitives.ReadUInt64LittleEndian(Take(8, "a 64-bit field"));

        public string String(uint byteLength, int max, string what)
        {
            if (byteLength > (uint)max)
                throw new ThawFormatException(_path, $"{what} is {byteLength} bytes long (at most {max})");
            ReadOnlySpan<byte> bytes = Take((int)byteLength, what);
            try
            {
                return StrictUtf8.GetString(bytes);
            }
            catch (DecoderFallbackException)
            {
                throw new ThawFormatException(_path, $"{what} is not valid UTF-8");
            }
        }
    }
}
