using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Pool;
using Thaw.Interop.Restore;

namespace Thaw.Tests;

/// <summary>The pool on the mock device: IPC handles are shared-memory files.</summary>
public class PoolTests : PoolFixture
{
    private (string Path, List<byte[]> Data) MakeSnapshot(string name, int seed, int tensors = 5)
    {
        var (s, data) = FreezeTensors(Files.PathOf(name), tensors, DType.BF16, i => 1000 + 300 * i, i => seed * 10 + i);
        return (s.Path, data);
    }

    /// <summary>A shared-memory "device allocation" and the request that restores every tensor into it.</summary>
    private (string File, string Request, Snapshot Snapshot) Destination(string snapshotPath)
    {
        Snapshot s = SnapshotReader.Read(snapshotPath);
        string file = ZeroFile(Files.PathOf($"dest-{Guid.NewGuid():N}"), s.DataLength + 4096);
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

    private static string Op(string op, string? snapshot = null) =>
        PoolProtocol.Write(w => { w.WriteString("op", op); if (snapshot is not null) w.WriteString("snapshot", snapshot); });

    [Test]
    public void LoadRestoreStatusAndOwnerOnlySocket()
    {
        var (path, data) = MakeSnapshot("a.thaw", 1);
        using var pool = new SnapshotPool(Engine, 64 << 20);
        using PoolServer server = Serve(pool);
        if (!OperatingSystem.IsWindows())
            Assert.That(File.GetUnixFileMode(SocketPath), Is.EqualTo(UnixFileMode.UserRead | UnixFileMode.UserWrite));
        using var client = new PoolClient(SocketPath);
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
        using var pool = new SnapshotPool(Engine, 1 << 20);
        using PoolServer server = Serve(pool);
        Snapshot s = SnapshotReader.Read(path);
        string file = Files.PathOf("mapped-device-memory");
        using (var memory = new SharedMapping(file, s.DataLength + 4096))
        {
            // Addresses only: the client finds the file and the offsets from the mapping.
            var targets = s.Tensors.Select(t => new RestoreTarget(t.Name, memory.Address + 4096 + (ulong)t.Offset, t.Length, t.DType, t.Shape.ToArray())).ToList();
            using var client = PoolClient.Connect(SocketPath);
            Assert.That(() => client.Restore(Engine, s, targets, fill: false), Throws.InstanceOf<PoolUnavailableException>().With.Message.Contains("does not hold"));
            client.Send(Op("load", path)).Dispose();
            var wrongShape = targets.Select((t, i) => i == 0 ? t with { Shape = [1, t.Shape![0]] } : t).ToList();
            Assert.That(() => client.Restore(Engine, s, wrongShape), Throws.InstanceOf<ThawMismatchException>().With.Message.Contains("shape"));
            PoolRestoreResult r = client.Restore(Engine, s, targets);
            Assert.That((r.Bytes, r.Filled), Is.EqualTo((s.TensorBytes, false)));
            ulong privateMemory = Engine.Allocate(s.DataLength);
            try
            {
                var unshared = s.Tensors.Select(t => new RestoreTarget(t.Name, privateMemory + (ulong)t.Offset, t.Length)).ToList();
                // The pool's own copies reach only memory it can open; its shared host copy, copied here, reaches any.
                Assert.That(() => client.Restore(Engine, s, unshared, share: false), Throws.InstanceOf<PoolUnavailableException>().With.Message.Contains("shared file mapping"));
                Assert.That(client.Restore(Engine, s, unshared).Shared, Is.True);
            }
            finally
            {
                Engine.Free(privateMemory);
            }
        }
        AssertRestored(file, s, data);
        Assert.That(pool.List().Single().Hits, Is.EqualTo(2));
    }

    [Test]
    public void BadRequestsGetErrorsAndThePoolKeepsServing()
    {
        var (path, data) = MakeSnapshot("a.thaw", 2);
        using var pool = new SnapshotPool(Engine, 64 << 20);
        using PoolServer server = Serve(pool);
        using var client = new PoolClient(SocketPath);
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
            dying.Connect(new UnixDomainSocketEndPoint(SocketPath));
            dying.Send(Encoding.UTF8.GetBytes(request[..(request.Length / 2)]));
        }
        client.Send(request).Dispose();
        AssertRestored(file, s, data);
    }

    [Test]
    public void PeersOfOtherUsersAreRefused()
    {
        using var pool = new SnapshotPool(Engine, 1 << 20);
        using var server = new PoolServer(pool, SocketPath, allowedUids: [987654]) { SharedMemoryDirectory = Files.Directory };
        server.Start();
        if (!OperatingSystem.IsWindows()) // the allowed uid must be able to connect; SO_PEERCRED turns the rest away
            Assert.That(File.GetUnixFileMode(SocketPath) & UnixFileMode.OtherWrite, Is.EqualTo(UnixFileMode.OtherWrite));
        using var client = new PoolClient(SocketPath);
        Assert.That(() => client.Send(Op("status")), Throws.InstanceOf<ThawException>().With.Message.Contains("is not served"));
    }

    [Test]
    public void SeveralClientsAtOnceGetCorrectBytes()
    {
        var snapshots = Enumerable.Range(0, 2).Select(i => MakeSnapshot($"s{i}.thaw", 10 + i)).ToList();
        using var pool = new SnapshotPool(Engine, 64 << 20);
        using PoolServer server = Serve(pool);
        foreach (var (path, _) in snapshots)
            pool.Load(path);
        Parallel.For(0, 12, i =>
        {
            var (path, data) = snapshots[i % 2];
            var (file, request, s) = Destination(path);
            using var client = new PoolClient(SocketPath);
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
        using var pool = new SnapshotPool(Engine, 2 * each);
        pool.Load(a.Path);
        pool.Load(b.Path);
        Thread.Sleep(5);
        pool.Load(a.Path); // touch a: b is now the least recently used
        pool.Load(c.Path);
        Assert.That(pool.List().Select(e => Path.GetFileName(e.Path)), Is.EquivalentTo(new[] { "a.thaw", "c.thaw" }));
        Assert.That(pool.UsedBytes, Is.LessThanOrEqualTo(pool.BudgetBytes));
        Assert.That(pool.Evict(a.Path), Is.True);
        Assert.That(pool.Evict(a.Path), Is.False);
        using var tiny = new SnapshotPool(Engine, 4096);
        Assert.That(() => tiny.Load(a.Path), Throws.InstanceOf<ThawException>().With.Message.Contains("budget"));
    }

    [Test]
    public void ASecondServerOnALiveSocketIsRefused()
    {
        using var pool = new SnapshotPool(Engine, 1 << 20);
        using PoolServer server = Serve(pool);
        using var second = new PoolServer(pool, SocketPath) { SharedMemoryDirectory = Files.Directory };
        Assert.That(() => second.Start(), Throws.InstanceOf<IOException>().With.Message.Contains("already serving"));
    }
}
