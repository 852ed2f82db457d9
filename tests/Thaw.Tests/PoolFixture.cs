using Thaw.Interop.Format;
using Thaw.Interop.Pool;
using Thaw.Interop.Restore;

namespace Thaw.Tests;

/// <summary>What the pool's fixtures share: a temporary directory per test, a mock engine with 8 KiB
/// chunks (so that small snapshots still take many chunks), the socket path their servers listen
/// on, and the snapshots, files and servers they make there.</summary>
public abstract class PoolFixture
{
    private protected TestFiles Files { get; private set; } = null!;
    private protected ThawEngine Engine { get; private set; } = null!;
    /// <summary>pool.sock in the temporary directory.</summary>
    protected string SocketPath { get; private set; } = "";

    // NUnit runs a base class's SetUp before the derived fixture's, and its TearDown after: what a
    // fixture builds on the engine is disposed before the engine.
    [SetUp]
    public void SetUpPoolFixture()
    {
        Files = new TestFiles();
        Engine = ThawEngine.Create(DeviceKind.Mock, settings: new EngineSettings { ChunkBytes = 8192, StagingBytes = 8192 * 8, IoThreads = 2 });
        SocketPath = Files.PathOf("pool.sock");
    }

    [TearDown]
    public void TearDownPoolFixture()
    {
        Engine.Dispose();
        Files.Dispose();
    }

    /// <summary>A snapshot at <paramref name="path"/> of <paramref name="count"/> one-dimensional tensors
    /// w0, w1, ... of <paramref name="elements"/>(i) elements and random bytes from <paramref name="seed"/>(i); and those bytes.</summary>
    private protected (Snapshot Snapshot, List<byte[]> Data) FreezeTensors(string path, int count, DType dtype, Func<int, long> elements, Func<int, int> seed)
    {
        var host = Enumerable.Range(0, count).Select(i => new TestFiles.HostTensor($"w{i}", dtype, [elements(i)], seed(i))).ToList();
        try
        {
            return (TestFiles.Freeze(Engine, path, host), host.Select(t => t.Bytes).ToList());
        }
        finally
        {
            host.ForEach(t => t.Dispose());
        }
    }

    /// <summary>A server of <paramref name="pool"/> on <see cref="SocketPath"/>, started; mock handles name
    /// files in <paramref name="sharedMemoryDirectory"/> (default: the temporary directory).</summary>
    private protected PoolServer Serve(SnapshotPool pool, string? sharedMemoryDirectory = null)
    {
        var server = new PoolServer(pool, SocketPath) { SharedMemoryDirectory = sharedMemoryDirectory ?? Files.Directory };
        server.Start();
        return server;
    }

    /// <summary>A sparse file of <paramref name="length"/> zero bytes at <paramref name="path"/> (mock device memory a pool opens by name).</summary>
    private protected static string ZeroFile(string path, long length)
    {
        using (var f = File.Create(path))
            f.SetLength(length);
        return path;
    }
}
