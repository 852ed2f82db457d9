using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Pool;
using Thaw.Interop.Restore;

namespace Thaw.Tests;

/// <summary>The pool on the mock device: IPC handles are shared-memory files.</summary>
public class PoolTests
{
    private TestFiles _files = null!;
    private ThawEngine _engine = null!;
    private string _socket = "";

    [SetUp]
    public void SetUp()
    {
        _files = new TestFiles();
        _engine = ThawEngine.Create(DeviceKind.Mock, settings: new EngineSettings { ChunkBytes = 8192, StagingBytes = 8192 * 8, IoThreads = 2 });
        _socket = Path.Combine(_files.Directory, "pool.sock");
    }

    [TearDown]
    public void TearDown()
    {
        _engine.Dispose();
        _files.Dispose();
    }

    private (string Path, List<byte[]> Data) MakeSnapshot(string name, int seed, int tensors = 5)
    {
        var host = Enumerable.Range(0, tensors).Select(i => new TestFiles.HostTensor($"w{i}", DType.BF16, [1000 + 300 * i], seed * 10 + i)).ToList();
        Snapshot s = TestFiles.Freeze(_engine, _files.PathOf(name), host);
        var data = host.Select(t => t.Bytes).ToList();
        host.ForEach(t => t.Dispose());
        return (s.Path, data);
    }

    /// <summary>A shared-memory "device allocation" and the request that restores every tensor into it.</summary>
    private (string File, string Request, Snapshot Snapshot) Destination(string snapshotPath)
    {
        Snapshot s = SnapshotReader.Read(snapshotPath);
        string file = _files.PathOf($"dest-{Guid.NewGuid():N}");
        using (var f = File.Create(file))
            f.SetLength(s.DataLength + 4096);
        string request = PoolProtocol.RestoreRequest(snapshotPath,
            s.Tensors.Select(t => new PoolTarget(t.Name, Encoding.UTF8.GetBytes(Path.GetFileName(file)), 4096 + t.Offset, t.Length)), fill: false);
        return (file, request, s);
    }

    private static void AssertRestored(string file, Snapshot s, List<byte[]> data)
    {
        byte[] bytes = File.ReadAllBytes(file);
        for (int i = 0; i < data.Count; i++)
            Assert.That(bytes.AsSpan(4096 + (int)s.Tensors[i].Offset, data[i].Length).ToArray(), Is.EqualTo(data[i]));
    }

    private PoolServer Serve(SnapshotPool pool)
    {
        var server = new PoolServer(pool, _socket) { SharedMemoryDirectory = _files.Directory };
        server.Start();
        return server;
    }

    private static string Op(string op, string? snapshot = null) =>
        PoolProtocol.Write(w => { w.WriteString("op", op); if (snapshot is not null) w.WriteString("snapshot", snapshot); });

    [Test]
    public void LoadRestoreStatusAndOwnerOnlySocket()
    {
        var (path, data) = MakeSnapshot("a.thaw", 1);
        using var pool = new SnapshotPool(_engine, 64 << 20);
        using PoolServer server = Serve(pool);
        if (!OperatingSystem.IsWindows())
            Assert.That(File.GetUnixFileMode(_socket), Is.EqualTo(UnixFileMode.UserRead | UnixFileMode.UserWrite));
        using var client = new PoolClient(_socket);
        client.Send(Op("load", path)).Dispose();
        var (file, request, s) = Destination(path);
        using (JsonDocument r = client.Send(request))
            Assert.That(r.RootElement.GetProperty("bytes").GetInt64(), Is.EqualTo(s.TensorBytes));
        AssertRestored(file, s, data);
        using JsonDocument status = client.Send(Op("status"));
        JsonElement entry = status.RootElement.GetProperty("snapshots")[0];
        Assert.That(entry.GetProperty("hits").GetInt64(), Is.EqualTo(1));
        Assert.That(entry.GetProperty("bytes_served").GetInt64(), Is.EqualTo(s.TensorBytes));
    }

    [Test]
    public void TheClientRestoresByAddressIntoASharedMappingAndChecksTargetsFirst()
    {
        var (path, data) = MakeSnapshot("client.thaw", 4);
        using var pool = new SnapshotPool(_engine, 1 << 20);
        using PoolServer server = Serve(pool);
        Snapshot s = SnapshotReader.Read(path);
        string file = _files.PathOf("mapped-device-memory");
        using (var f = File.Create(file))
            f.SetLength(s.DataLength + 4096);
        using var map = System.IO.MemoryMappedFiles.MemoryMappedFile.CreateFromFile(file, FileMode.Open);
        using var view = map.CreateViewAccessor();
        unsafe
        {
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            try
            {
                // Addresses only: the client finds the file and the offsets from the mapping.
                var targets = s.Tensors.Select(t => new RestoreTarget(t.Name, (ulong)p + 4096 + (ulong)t.Offset, t.Length, t.DType, t.Shape.ToArray())).ToList();
                using var client = PoolClient.Connect(_socket);
                Assert.That(() => client.Restore(_engine, s, targets, fill: false), Throws.InstanceOf<PoolUnavailableException>().With.Message.Contains("does not hold"));
                client.Send(Op("load", path)).Dispose();
                var wrongShape = targets.Select((t, i) => i == 0 ? t with { Shape = [1, t.Shape![0]] } : t).ToList();
                Assert.That(() => client.Restore(_engine, s, wrongShape), Throws.InstanceOf<ThawMismatchException>().With.Message.Contains("shape"));
                PoolRestoreResult r = client.Restore(_engine, s, targets);
                Assert.That((r.Bytes, r.Filled), Is.EqualTo((s.TensorBytes, false)));
                ulong privateMemory = _engine.Allocate(s.DataLength);
                try
                {
                    var unshared = s.Tensors.Select(t => new RestoreTarget(t.Name, privateMemory + (ulong)t.Offset, t.Length)).ToList();
                    Assert.That(() => client.Restore(_engine, s, unshared), Throws.InstanceOf<PoolUnavailableException>().With.Message.Contains("shared file mapping"));
                }
                finally
                {
                    _engine.Free(privateMemory);
                }
            }
            finally
            {
                view.SafeMemoryMappedViewHandle.ReleasePointer();
            }
        }
        view.Flush();
        AssertRestored(file, s, data);
        Assert.That(pool.List().Single().Hits, Is.EqualTo(1));
    }

    [Test]
    public void BadRequestsGetErrorsAndThePoolKeepsServing()
    {
        var (path, data) = MakeSnapshot("a.thaw", 2);
        using var pool = new SnapshotPool(_engine, 64 << 20);
        using var server = new PoolServer(pool, _socket) { SharedMemoryDirectory = _files.Directory };
        server.Start();
        using var client = new PoolClient(_socket);
        Assert.That(() => client.Send("this is not json"), Throws.InstanceOf<ThawException>());
        Assert.That(() => client.Send(Op("dance")), Throws.InstanceOf<ThawException>().With.Message.Contains("unknown op"));
        var (file, request, s) = Destination(path);
        Assert.That(() => client.Send(request), Throws.InstanceOf<FileNotFoundException>().With.Message.Contains("does not hold"));
        client.Send(Op("load", path)).Dispose();
        string badHandle = request.Replace(Convert.ToBase64String(Encoding.UTF8.GetBytes(Path.GetFileName(file))), Convert.ToBase64String(Encoding.UTF8.GetBytes("no-such-shm")));
        Assert.That(() => client.Send(badHandle), Throws.InstanceOf<ThawException>().With.Message.Contains("no-such-shm"));
        string wrongName = request.Replace("\"w0\"", "\"nope\"");
        Assert.That(() => client.Send(wrongName), Throws.InstanceOf<ThawException>().With.Message.Contains("nope"));

        // A client that dies mid-request: half a line, then gone.
        using (var dying = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            dying.Connect(new UnixDomainSocketEndPoint(_socket));
            dying.Send(Encoding.UTF8.GetBytes(request[..(request.Length / 2)]));
        }
        client.Send(request).Dispose();
        AssertRestored(file, s, data);
    }

    [Test]
    public void PeersOfOtherUsersAreRefused()
    {
        using var pool = new SnapshotPool(_engine, 1 << 20);
        using var server = new PoolServer(pool, _socket, allowedUids: [987654]) { SharedMemoryDirectory = _files.Directory };
        server.Start();
        if (!OperatingSystem.IsWindows()) // the allowed uid must be able to connect; SO_PEERCRED turns the rest away
            Assert.That(File.GetUnixFileMode(_socket) & UnixFileMode.OtherWrite, Is.EqualTo(UnixFileMode.OtherWrite));
        using var client = new PoolClient(_socket);
        Assert.That(() => client.Send(Op("status")), Throws.InstanceOf<ThawException>().With.Message.Contains("is not served"));
    }

    [Test]
    public void SeveralClientsAtOnceGetCorrectBytes()
    {
        var snapshots = Enumerable.Range(0, 2).Select(i => MakeSnapshot($"s{i}.thaw", 10 + i)).ToList();
        using var pool = new SnapshotPool(_engine, 64 << 20);
        using var server = new PoolServer(pool, _socket) { SharedMemoryDirectory = _files.Directory };
        server.Start();
        foreach (var (path, _) in snapshots)
            pool.Load(path);
        Parallel.For(0, 12, i =>
        {
            var (path, data) = snapshots[i % 2];
            var (file, request, s) = Destination(path);
            using var client = new PoolClient(_socket);
            client.Send(request).Dispose();
            AssertRestored(file, s, data);
        });
        Assert.That(pool.List().Sum(e => e.Hits), Is.EqualTo(12));
    }

    [Test]
    public void TheLeastRecentlyUsedSnapshotIsEvictedToStayInBudget()
    {
        var a = MakeSnapshot("a.thaw", 20);
        var b = MakeSnapshot("b.thaw", 21);
        var c = MakeSnapshot("c.thaw", 22);
        long each = SnapshotReader.Read(a.Path).DataLength;
        using var pool = new SnapshotPool(_engine, 2 * each);
        pool.Load(a.Path);
        pool.Load(b.Path);
        Thread.Sleep(5);
        pool.Load(a.Path); // touch a: b is now the least recently used
        pool.Load(c.Path);
        Assert.That(pool.List().Select(e => Path.GetFileName(e.Path)), Is.EquivalentTo(new[] { "a.thaw", "c.thaw" }));
        Assert.That(pool.UsedBytes, Is.LessThanOrEqualTo(pool.BudgetBytes));
        Assert.That(pool.Evict(a.Path), Is.True);
        Assert.That(pool.Evict(a.Path), Is.False);
        using var tiny = new SnapshotPool(_engine, 4096);
        Assert.That(() => tiny.Load(a.Path), Throws.InstanceOf<ThawException>().With.Message.Contains("budget"));
    }

    [Test]
    public void ASecondServerOnALiveSocketIsRefused()
    {
        using var pool = new SnapshotPool(_engine, 1 << 20);
        using var server = new PoolServer(pool, _socket) { SharedMemoryDirectory = _files.Directory };
        server.Start();
        using var second = new PoolServer(pool, _socket) { SharedMemoryDirectory = _files.Directory };
        Assert.That(() => second.Start(), Throws.InstanceOf<IOException>().With.Message.Contains("already serving"));
    }
}
