using System.Text;
using System.Text.Json;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Pool;
using Thaw.Interop.Restore;

namespace Thaw.Tests;

/// <summary>Restores served from a live peer's memory (docs/POOL.md, "Restoring from a live peer"),
/// on the mock device: a publisher's "device memory" is a shared file holding the snapshot's bytes.</summary>
public class PeerTests : PoolFixture
{
    private (Snapshot Snapshot, List<byte[]> Data) MakeSnapshot(string name, int seed) =>
        FreezeTensors(Files.PathOf(name), 4, DType.F16, i => 700 + 512 * i, i => seed * 10 + i);

    /// <summary>A shared file standing in for one device allocation: 4096 bytes, then the tensors at their snapshot offsets.</summary>
    private string Memory(string name, Snapshot s, List<byte[]>? data = null)
    {
        string file = Files.PathOf(name);
        using var f = File.Create(file);
        f.SetLength(s.DataLength + 4096);
        for (int i = 0; data is not null && i < data.Count; i++)
        {
            f.Position = 4096 + s.Tensors[i].Offset;
            f.Write(data[i]);
        }
        return file;
    }

    private static List<PoolTarget> Targets(string file, Snapshot s) =>
        s.Tensors.Select(t => new PoolTarget(t.Name, Encoding.UTF8.GetBytes(Path.GetFileName(file)), 4096 + t.Offset, t.Length)).ToList();

    private static string Publish(Snapshot s, IEnumerable<PoolTarget> targets, long generation = 1, SnapshotIdentity? identity = null, uint[]? allow = null,
        string? device = null) =>
        PoolProtocol.Write(w =>
        {
            if (device is not null)
                w.WriteString("device", device);
            SnapshotIdentity id = identity ?? SnapshotIdentity.Of(SnapshotReader.Read(s.Path));
            w.WriteString("op", "publish");
            w.WriteString("snapshot", s.Path);
            w.WriteStartObject("identity");
            PoolProtocol.WriteIdentityFields(w, id);
            w.WriteEndObject();
            w.WriteNumber("generation", generation);
            if (allow is not null)
            {
                w.WriteStartArray("allow_uids");
                foreach (uint u in allow)
                    w.WriteNumberValue(u);
                w.WriteEndArray();
            }
            PoolProtocol.WriteTargets(w, targets);
        });

    private static string Restore(Snapshot s, string file, string? device = null) => PoolProtocol.RestoreRequest(s.Path, Targets(file, s), fill: false, device);

    private static string? Served(JsonDocument r) => r.RootElement.TryGetProperty("served", out JsonElement e) ? e.GetString() : null;

    private static void AssertHolds(string file, Snapshot s, List<byte[]> data)
    {
        byte[] bytes = File.ReadAllBytes(file);
        for (int i = 0; i < data.Count; i++)
            Assert.That(bytes.AsSpan(4096 + (int)s.Tensors[i].Offset, data[i].Length).ToArray(), Is.EqualTo(data[i]), $"tensor {i}");
    }

    private static void WaitFor(Func<bool> condition)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (!condition() && clock.Elapsed < TimeSpan.FromSeconds(10))
            Thread.Sleep(10);
        Assert.That(condition(), "timed out");
    }

    [Test]
    public void APublishedPeerServesARestoreDeviceToDeviceWithoutAHostCopy()
    {
        var (s, data) = MakeSnapshot("peer.thaw", 1);
        using var pool = new SnapshotPool(Engine, 64 << 20);
        using PoolServer server = Serve(pool);
        using var publisher = new PoolClient(SocketPath);
        using (JsonDocument p = publisher.Send(Publish(s, Targets(Memory("publisher", s, data), s))))
            Assert.That((p.RootElement.GetProperty("generation").GetInt64(), p.RootElement.GetProperty("tensors").GetInt32(),
                p.RootElement.GetProperty("bytes").GetInt64()), Is.EqualTo((1L, 4, s.TensorBytes)));
        string destination = Memory("client", s);
        using var client = new PoolClient(SocketPath);
        using (JsonDocument r = client.Send(Restore(s, destination)))
            Assert.That((Served(r), r.RootElement.GetProperty("bytes").GetInt64()), Is.EqualTo(("peer", s.TensorBytes)));
        AssertHolds(destination, s, data);
        Assert.That(pool.UsedBytes, Is.Zero, "the pool read nothing into its own memory");
        using JsonDocument status = client.Send(PoolProtocol.Write(w => w.WriteString("op", "status")));
        JsonElement published = status.RootElement.GetProperty("publications")[0];
        Assert.That((published.GetProperty("generation").GetInt64(), published.GetProperty("served").GetInt64()), Is.EqualTo((1L, 1L)));
    }

    [Test]
    public void APublisherOnAnotherDeviceServesAPeerCopy()
    {
        var (s, data) = MakeSnapshot("cross.thaw", 10);
        using var pool = new SnapshotPool(Engine, 64 << 20);
        using PoolServer server = Serve(pool);
        using var publisher = new PoolClient(SocketPath);
        publisher.Send(Publish(s, Targets(Memory("publisher", s, data), s), device: "mock-1")).Dispose();
        string destination = Memory("client", s);
        using var client = new PoolClient(SocketPath);
        using (JsonDocument r = client.Send(Restore(s, destination, "mock-0")))
            Assert.That((Served(r), r.RootElement.GetProperty("device").GetString()), Is.EqualTo(("peer", "mock-0")));
        AssertHolds(destination, s, data);
        Assert.That(() => publisher.Send(Publish(s, Targets(Memory("publisher", s, data), s), generation: 2, device: "mock-99")),
            Throws.InstanceOf<ThawException>().With.Message.Contains("mock-99"));
    }

    [Test]
    public void APublicationEndsWithItsConnectionAndRestoresFallBack()
    {
        var (s, data) = MakeSnapshot("gone.thaw", 2);
        using var pool = new SnapshotPool(Engine, 64 << 20);
        using PoolServer server = Serve(pool);
        var publisher = new PoolClient(SocketPath);
        publisher.Send(Publish(s, Targets(Memory("publisher", s, data), s))).Dispose();
        Assert.That(server.Publications, Is.EqualTo(1));
        publisher.Dispose();
        WaitFor(() => server.Publications == 0);
        string destination = Memory("client", s);
        using var client = new PoolClient(SocketPath);
        Assert.That(() => client.Send(Restore(s, destination)), Throws.InstanceOf<FileNotFoundException>(), "no peer, no host copy: the client restores from the file");
        client.Send(PoolProtocol.Write(w => { w.WriteString("op", "load"); w.WriteString("snapshot", s.Path); })).Dispose();
        using (JsonDocument r = client.Send(Restore(s, destination)))
            Assert.That(Served(r), Is.Not.EqualTo("peer"));
        AssertHolds(destination, s, data);
    }

    [TestCase("unpublish")]
    [TestCase("republish")]
    [TestCase("disconnect")]
    public void AMemoryChangeDuringThePeerCopyDiscardsItsBytes(string change)
    {
        var (s, data) = MakeSnapshot($"change-{change}.thaw", 3);
        using var pool = new SnapshotPool(Engine, 64 << 20);
        using PoolServer server = Serve(pool);
        string memory = Memory("publisher", s, data), destination = Memory("client", s);
        byte[] garbage = Enumerable.Repeat((byte)0xAB, (int)s.DataLength + 4096).ToArray();
        long generation = 0;
        PoolClient? publisher = null;
        void PublishAgain()
        {
            Memory("publisher", s, data);
            publisher ??= new PoolClient(SocketPath);
            publisher.Send(Publish(s, Targets(memory, s), ++generation)).Dispose();
        }
        // The publisher withdraws (or moves, or drops) its publication before it changes its memory,
        // and the change lands while the pool's copy from it is being made: the copy may hold old bytes,
        // new ones or a mix (the garbage written into the destination stands for that), so it must not count.
        server.AfterPeerCopy = () =>
        {
            if (change == "unpublish")
                publisher!.Send(PoolProtocol.Write(w => { w.WriteString("op", "unpublish"); w.WriteString("snapshot", s.Path); })).Dispose();
            else if (change == "republish")
                publisher!.Send(Publish(s, Targets(Memory("moved", s, data), s), ++generation)).Dispose(); // the weights moved
            else
            {
                publisher!.Dispose();
                publisher = null;
                WaitFor(() => server.Publications == 0);
            }
            File.WriteAllBytes(memory, garbage);
            File.WriteAllBytes(destination, garbage);
        };
        using var client = new PoolClient(SocketPath);

        PublishAgain();
        Assert.That(() => client.Send(Restore(s, destination)), Throws.InstanceOf<FileNotFoundException>(),
            "no host copy: the client is told to restore from the file");

        // With a host copy held, the pool overwrites every target from it instead.
        client.Send(PoolProtocol.Write(w => { w.WriteString("op", "load"); w.WriteString("snapshot", s.Path); })).Dispose();
        PublishAgain();
        using (JsonDocument r = client.Send(Restore(s, destination)))
            Assert.That(Served(r), Is.Not.EqualTo("peer"));
        AssertHolds(destination, s, data);
        publisher?.Dispose();
    }

    [Test]
    public void APublisherMayStaySilentPastTheIdleTimeoutOthersMayNot()
    {
        var (s, data) = MakeSnapshot("idle.thaw", 9);
        using var pool = new SnapshotPool(Engine, 64 << 20);
        var server = new PoolServer(pool, SocketPath) { SharedMemoryDirectory = Files.Directory, Limits = new PoolLimits { IdleTimeout = TimeSpan.FromMilliseconds(200) } };
        server.Start();
        using (server)
        {
            using var publisher = new PoolClient(SocketPath);
            publisher.Send(Publish(s, Targets(Memory("publisher", s, data), s))).Dispose();
            using var idle = new PoolClient(SocketPath);
            idle.Send(PoolProtocol.Write(w => w.WriteString("op", "ping"))).Dispose();
            Thread.Sleep(800);
            Assert.That(server.Publications, Is.EqualTo(1));
            Assert.That(() => idle.Send(PoolProtocol.Write(w => w.WriteString("op", "ping"))), Throws.Exception, "the silent non-publisher was closed");
            publisher.Send(PoolProtocol.Write(w => { w.WriteString("op", "unpublish"); w.WriteString("snapshot", s.Path); })).Dispose();
            Assert.That(server.Publications, Is.Zero);
            Thread.Sleep(800);
            Assert.That(() => publisher.Send(PoolProtocol.Write(w => w.WriteString("op", "ping"))), Throws.Exception, "no longer publishing, it is closed when idle");
        }
    }

    [Test]
    public void AUidThePublisherDoesNotAllowIsNotServed()
    {
        var (s, data) = MakeSnapshot("uids.thaw", 4);
        using var engines = DeviceEngines.Around(Engine);
        using var peers = new PeerPublications(engines);
        uint me = PeerCredentials.CurrentUid();
        var publisher = new PoolPeer(me, Files.Directory);
        string request = Publish(s, Targets(Memory("publisher", s, data), s));
        peers.Publish(PoolRequest.Parse(Encoding.UTF8.GetBytes(request)), PublishFields.Parse(Encoding.UTF8.GetBytes(request)), publisher, connection: 1);
        string destination = Memory("client", s);
        uint stranger = me == 65534 ? 65533u : 65534u;
        Assert.That(peers.TryRestore(s.Path, Targets(destination, s), new PoolPeer(stranger, Files.Directory), null, null, out string? declined), Is.Null);
        Assert.That(declined, Does.Contain($"uid {stranger}"));
        Assert.That(File.ReadAllBytes(destination).All(b => b == 0), "nothing was copied for the stranger");
        Assert.That(peers.TryRestore(s.Path, Targets(destination, s), publisher, null, null, out declined), Is.Not.Null, declined);
        AssertHolds(destination, s, data);
        // A client that read another version of the file than the one published is not served from it.
        Assert.That(peers.TryRestore(s.Path, Targets(destination, s), publisher, null, SnapshotIdentity.Of(s) with { ModifiedNs = 1 }, out declined), Is.Null);
        Assert.That(declined, Does.Contain("another version"));

        // Allowed explicitly, the stranger is served (its own file: the pool opens only memory a peer owns).
        string allowed = Publish(s, Targets(Memory("publisher", s, data), s), generation: 2, allow: [stranger]);
        peers.Publish(PoolRequest.Parse(Encoding.UTF8.GetBytes(allowed)), PublishFields.Parse(Encoding.UTF8.GetBytes(allowed)), publisher, connection: 1);
        Assert.That(() => peers.TryRestore(s.Path, Targets(destination, s), new PoolPeer(stranger, Files.Directory), null, null, out _),
            Throws.InstanceOf<ThawMismatchException>().With.Message.Contains($"not to the peer (uid {stranger})"),
            "allowed to read, the stranger still writes only into memory it owns");
        if (me != 0)
            return; // giving the stranger a file of its own needs root
        string own = Memory("stranger", s);
        Assert.That(chown(own, stranger, stranger), Is.Zero);
        Assert.That(peers.TryRestore(s.Path, Targets(own, s), new PoolPeer(stranger, Files.Directory), null, null, out declined), Is.Not.Null, declined);
        AssertHolds(own, s, data);
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int chown(string path, uint owner, uint group);

    [Test]
    public void APublicationIsRefusedUnlessItsMemoryAndIdentityHoldTheSnapshot()
    {
        var (s, data) = MakeSnapshot("refused.thaw", 5);
        var (other, _) = MakeSnapshot("other.thaw", 6);
        using var pool = new SnapshotPool(Engine, 64 << 20);
        using PoolServer server = Serve(pool);
        string memory = Memory("publisher", s, data);
        string small = Files.PathOf("small");
        File.WriteAllBytes(small, new byte[4096]);
        File.CreateSymbolicLink(Files.PathOf("link"), memory);
        List<PoolTarget> good = Targets(memory, s);
        PoolTarget first = good[0];
        var cases = new (string What, string Request, string Names)[]
        {
            ("outside the directory", Publish(s, good.Select((t, i) => i == 1 ? t with { Handle = "../publisher"u8.ToArray() } : t)), "targets[1].handle"),
            ("an absolute path elsewhere", Publish(s, good.Select((t, i) => i == 0 ? t with { Handle = "/etc/passwd"u8.ToArray() } : t)), "targets[0].handle"),
            ("a symbolic link", Publish(s, good.Select(t => t with { Handle = "link"u8.ToArray() })), "symbolic link"),
            ("past its file's end", Publish(s, good.Select((t, i) => i == 3 ? t with { Offset = s.DataLength + 4096 - t.Capacity + 1 } : t)), "targets[3]"),
            ("a file too small", Publish(s, [first with { Handle = "small"u8.ToArray() }]), "past the end"),
            ("capacity below the tensor", Publish(s, [first with { Capacity = first.Capacity - 1 }]), "targets[0].capacity"),
            ("an unknown tensor", Publish(s, [first with { Name = "nope" }]), "targets[0].name"),
            ("a tensor twice", Publish(s, [first, first]), "targets[1].name"),
            ("no targets", Publish(s, []), "targets"),
            ("another snapshot's identity", Publish(s, good, identity: SnapshotIdentity.Of(other)), "not the one published"),
            ("a wrong size", Publish(s, good, identity: SnapshotIdentity.Of(s) with { Size = s.FileLength + 1 }), "not the one published"),
            ("a wrong header CRC32C", Publish(s, good, identity: SnapshotIdentity.Of(s) with { HeaderCrc32C = s.HeaderCrc32C ^ 1 }), "header_crc32c"),
            ("no identity", Publish(s, good).Replace("\"identity\"", "\"identiti\""), "no field 'identity'"),
        };
        using var publisher = new PoolClient(SocketPath);
        foreach (var (what, request, names) in cases)
        {
            Assert.That(() => publisher.Send(request).Dispose(), Throws.InstanceOf<ThawException>().Or.InstanceOf<FileNotFoundException>()
                .With.Message.Contains(names), what);
            Assert.That(server.Publications, Is.Zero, what);
        }
        publisher.Send(Publish(s, good, generation: 5)).Dispose();
        var stale = Assert.Throws<ThawException>(() => publisher.Send(Publish(s, good, generation: 5)).Dispose());
        Assert.That(stale!.Kind, Is.EqualTo(ThawErrorKind.Mismatch));
        Assert.That(stale.Message, Does.Contain("generation: 5 does not follow"));
        string destination = Memory("client", s);
        using (JsonDocument r = publisher.Send(Restore(s, destination)))
            Assert.That(Served(r), Is.EqualTo("peer"), "a refused re-publish leaves generation 5 published");
        AssertHolds(destination, s, data);
    }

    [Test]
    public void AFileReplacedOnDiskIsNotServedFromTheOldPublication()
    {
        var (s, data) = MakeSnapshot("replaced.thaw", 7);
        using var pool = new SnapshotPool(Engine, 64 << 20);
        using PoolServer server = Serve(pool);
        using var publisher = new PoolClient(SocketPath);
        publisher.Send(Publish(s, Targets(Memory("publisher", s, data), s))).Dispose();
        var (replacement, _) = MakeSnapshot("replacement.thaw", 8);
        File.Move(replacement.Path, s.Path, overwrite: true);
        Snapshot now = SnapshotReader.Read(s.Path);
        using var client = new PoolClient(SocketPath);
        Assert.That(() => client.Send(Restore(now, Memory("client", now))), Throws.InstanceOf<FileNotFoundException>());
    }

    [TestCase("\"generation\":\"1\"", "generation")]
    [TestCase("\"generation\":-1", "generation")]
    [TestCase("\"generation\":1.5", "generation")]
    [TestCase("\"generation\":9223372036854775808", "generation")]
    [TestCase("\"generation\":1,\"allow_uids\":[4294967295]", "allow_uids[0]")]
    [TestCase("\"generation\":1,\"allow_uids\":[-1]", "allow_uids[0]")]
    [TestCase("\"generation\":1,\"allow_uids\":7", "allow_uids")]
    [TestCase("\"generation\":1,\"allow_uids\":[],\"allow_uids\":[]", "allow_uids: given twice")]
    [TestCase("\"allow_uids\":[]", "no field 'generation'")]
    public void MalformedPublishFieldsAreRefusedByName(string fields, string names)
    {
        string line = $"{{\"op\":\"publish\",\"snapshot\":\"/x\",{fields},\"targets\":[]}}";
        var e = Assert.Throws<FormatException>(() => PublishFields.Parse(Encoding.UTF8.GetBytes(line)));
        Assert.That(e!.Message, Does.StartWith(names));
    }

    [Test]
    public void AtMost64AllowedUidsAndEdgeValuesAccepted()
    {
        string many = string.Join(",", Enumerable.Range(0, PublishFields.MaxAllowUids + 1));
        Assert.That(() => PublishFields.Parse(Encoding.UTF8.GetBytes($"{{\"generation\":1,\"allow_uids\":[{many}]}}")),
            Throws.InstanceOf<FormatException>().With.Message.Contains("more than the 64"));
        PublishFields ok = PublishFields.Parse("{\"generation\":9223372036854775807,\"allow_uids\":[0,4294967294]}"u8);
        Assert.That((ok.Generation, ok.AllowUids!.Count), Is.EqualTo((long.MaxValue, 2)));
    }
}
