using System.IO.MemoryMappedFiles;

namespace Thaw.Tests;

/// <summary>Mock device memory as a client process has it: a new file of <c>length</c> zero bytes,
/// mapped shared, so a pool opening the file by name writes what this mapping reads.</summary>
internal sealed unsafe class SharedMapping : IDisposable
{
    private readonly MemoryMappedFile _map;
    private readonly MemoryMappedViewAccessor _view;
    private readonly byte* _base;

    public SharedMapping(string path, long length)
    {
        Path = path;
        using (var f = File.Create(path))
            f.SetLength(length);
        _map = MemoryMappedFile.CreateFromFile(path, FileMode.Open);
        _view = _map.CreateViewAccessor();
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref _base);
    }

    public string Path { get; }

    /// <summary>The mapping's first byte in this process.</summary>
    public ulong Address => (ulong)_base;

    public byte[] Read(long offset, long length) => new ReadOnlySpan<byte>(_base + offset, checked((int)length)).ToArray();

    public void Clear() => new Span<byte>(_base, checked((int)_view.Capacity)).Clear();

    public void Dispose()
    {
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
    }
}
