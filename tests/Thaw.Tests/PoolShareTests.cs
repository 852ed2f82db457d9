using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Pool;
using Thaw.Interop.Restore;

namespace Thaw.Tests;

/// <summary>Shared host copies (docs/POOL.md): a hit copied by the client itself into any memory,
/// only for the pool's own uid, never a fill, the snapshot held while shared and let go when the
/// connection says unshare or closes, and a pool without shareable memory serving by its own copies.</summary>
public sealed class PoolShareTests : PoolFixture
{
    private (Snapshot Snapshot, List<byte[]> Data) Make(string name) =>
        FreezeTensors(Files.PathOf(name), 6, DType.F32, i => 3000 + 977 * i, i => 40 + i);

    /// <summary>Private mock-device memory (no handle the pool could open) for every tensor of s.</summary>
    private (ulong Memory, List<RestoreTarget> Targets) Private(Snapshot s)
    {
        ulong memory = Engine.Allocate(s.DataLength);
        return (memory, s.Tensors.Select(t => new RestoreTarget(t.Name, memory + (ulong)t.Offset, t.Length)).ToList());
    }

    private void AssertHolds(Snapshot s, ulong memory, List<byte[]> data)
    {
        for (int i = 0; i < data.Count; i++)
        {
            byte[] got = new byte[data[i].Length];
            Engine.CopyToHost(memory + (ulong)s.Tensors[i].Offset, got);
            Assert.That(got, Is.EqualTo(data[i]), s.Tensors[i].Name);
        }
    }

    [Test]
    public void AHitIsCopiedHereIntoPrivateMemoryAndTheConnectionHoldsTheSnapshotUntilItCloses()
    {
        var (s, data) = Make("a.thaw");
        using var pool = new SnapshotPool(Engine, 64 << 20);
        using PoolServer server = Serve(pool);
        pool.Load(s.Path);
        var (memory, targets) = Private(s);
        try
        {
            var client = PoolClient.Connect(SocketPath);
            PoolRestoreResult r = client.Restore(Engine, s, targets);
            Assert.That((r.Shared, r.Filled, r.Bytes, r.Device), Is.EqualTo((true, false, s.TensorBytes, Engine.Identity)));
            AssertHolds(s, memory, data);
            Assert.That(pool.Evict(s.Path), Is.False, "held by the connection that shares it");
            client.Dispose();
            var until = DateTime.UtcNow.AddSeconds(5);
            while (!pool.Evict(s.Path) && DateTime.UtcNow < until)
                Thread.Sleep(10);
            Assert.That(pool.List(), Is.Empty, "let go when the connection closed");
        }
        finally
        {
            Engine.Free(memory);
        }
    }

    [Test]
    public void UnshareLetsGoOnAConnectionThatStays()
    {
        var (s, _) = Make("a.thaw");
        using var pool = new SnapshotPool(Engine, 64 << 20);
        using PoolServer server = Serve(pool);
        pool.Load(s.Path);
        var (memory, targets) = Private(s);
        try
        {
            using var client = PoolClient.Connect(SocketPath);
            Assert.That(client.Restore(Engine, s, targets).Shared, Is.True);
            using (var answer = client.Send(PoolProtocol.Write(w => { w.WriteString("op", "unshare"); w.WriteString("snapshot", s.Path); })))
                Assert.That(answer.RootElement.GetProperty("released").GetInt32(), Is.EqualTo(1));
            Assert.That(pool.Evict(s.Path), Is.True);
        }
        finally
        {
            Engine.Free(memory);
        }
    }

    [Test]
    public void OnlyThePoolsOwnUserIsSharedAndAShareNeverFills()
    {
        var (s, _) = Make("a.thaw");
        using var pool = new SnapshotPool(Engine, 64 << 20);
        uint self = PeerCredentials.CurrentUid();
        Assert.That(() => pool.Share(s.Path, new PoolPeer(self, Files.Directory)), Throws.InstanceOf<FileNotFoundException>());
        Assert.That(pool.List(), Is.Empty, "a share does not read the snapshot");
        pool.Load(s.Path);
        Assert.That(() => pool.Share(s.Path, new PoolPeer(self + 1, Files.Directory)),
            Throws.InstanceOf<PoolUnavailableException>().With.Message.Contains("own user"));
        using (PoolShareGrant grant = pool.Share(s.Path, new PoolPeer(self, Files.Directory)))
        {
            Assert.That(grant.Descriptors, Has.Length.EqualTo(grant.Lengths.Count));
            Assert.That(grant.Lengths.Sum(), Is.GreaterThanOrEqualTo(s.DataLength));
            Assert.That(pool.Evict(s.Path), Is.False);
        }
        Assert.That(pool.Evict(s.Path), Is.True);
    }

    [Test]
    public void APoolHoldingPinnedMemoryServesEveryHitWithItsOwnCopies()
    {
        var (s, data) = Make("a.thaw");
        using var pool = new SnapshotPool(Engine, 64 << 20) { SharedCopies = false };
        using PoolServer server = Serve(pool);
        pool.Load(s.Path);
        Assert.That(() => pool.Share(s.Path, new PoolPeer(PeerCredentials.CurrentUid(), Files.Directory)),
            Throws.InstanceOf<PoolUnavailableException>().With.Message.Contains("pinned memory"));
        string file = Files.PathOf("dest");
        using var mapping = new SharedMapping(file, s.DataLength);
        var targets = s.Tensors.Select(t => new RestoreTarget(t.Name, mapping.Address + (ulong)t.Offset, t.Length)).ToList();
        using var client = PoolClient.Connect(SocketPath);
        PoolRestoreResult r = client.Restore(Engine, s, targets);
        Assert.That((r.Shared, r.Filled), Is.EqualTo((false, false)));
        byte[] bytes = File.ReadAllBytes(file);
        Assert.That(r.Timings.Allocations, Is.EqualTo(1), "the pool opened the client's one shared file");
        for (int i = 0; i < data.Count; i++)
            Assert.That(bytes.AsSpan((int)s.Tensors[i].Offset, data[i].Length).ToArray(), Is.EqualTo(data[i]));
    }
}
