using System.Text;
using System.Text.Json;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Pool;
using Thaw.Interop.Restore;
using Core = Thaw.Interop.Native.Interop.ThawCore;

namespace Thaw.Tests;

/// <summary>Fill-through (a miss is read once into the pool while it is copied to the client) and
/// snapshot identity (a held copy is never served once the file on disk changed), on the mock device.</summary>
[NonParallelizable] // one test arms a process-wide core fault
public class PoolFillTests : PoolFixture
{
    private readonly List<string> _log = [];

    [SetUp]
    public void SetUp() => _log.Clear();

    /// <summary>Seven tensors of 2-12 KiB, so that 8 KiB fill batches give a pipeline of several batches.</summary>
    private List<byte[]> Freeze(string path, int seed) => FreezeTensors(path, 7, DType.BF16, i => 1000 + 700 * i, i => seed * 10 + i).Data;

    private SnapshotPool Pool(long budget = 64 << 20) => new(Engine, budget)
    {
        FillBatchBytes = 8192,
        Log = line => { lock (_log) _log.Add(line); },
    };

    /// <summary>4096 bytes, then the tensors at their offsets in the snapshot's data.</summary>
    private SharedMapping Destination(Snapshot s) => new(Files.PathOf($"dest-{Guid.NewGuid():N}"), s.DataLength + 4096);

    private static List<RestoreTarget> Targets(SharedMapping d, Snapshot s) =>
        s.Tensors.Select(t => new RestoreTarget(t.Name, d.Address + 4096 + (ulong)t.Offset, t.Length, t.DType, t.Shape.ToArray())).ToList();

    private static byte[] Tensor(SharedMapping d, Snapshot s, int i) => d.Read(4096 + s.Tensors[i].Offset, s.Tensors[i].Length);

    private static void AssertRestored(SharedMapping d, Snapshot s, List<byte[]> data)
    {
        for (int i = 0; i < data.Count; i++)
            Assert.That(Tensor(d, s, i), Is.EqualTo(data[i]), $"tensor {s.Tensors[i].Name}");
    }

    private PoolRestoreResult RestoreThroughPool(string path, SharedMapping d, bool fill = true)
    {
        Snapshot s = SnapshotReader.Read(path);
        d.Clear();
        using var client = PoolClient.Connect(SocketPath);
        return client.Restore(Engine, s, Targets(d, s), fill);
    }

    [Test]
    public void AFillServesTheClientAndHoldsTheSnapshot()
    {
        string path = Files.PathOf("a.thaw");
        List<byte[]> data = Freeze(path, 1);
        Snapshot s = SnapshotReader.Read(path);
        Assert.That(FillThrough.Plan(s, 8192), Has.Count.GreaterThan(3), "the fill runs as a pipeline of several batches");
        using SnapshotPool pool = Pool();
        using PoolServer server = Serve(pool);
        using SharedMapping d = Destination(s);

        Assert.That(() => RestoreThroughPool(path, d, fill: false), Throws.InstanceOf<PoolUnavailableException>().With.Message.Contains("does not hold"));
        Assert.That(pool.List(), Is.Empty);

        PoolRestoreResult first = RestoreThroughPool(path, d);
        Assert.That((first.Filled, first.Bytes), Is.EqualTo((true, s.TensorBytes)));
        AssertRestored(d, s, data);
        PoolEntryInfo held = pool.List().Single();
        Assert.That((held.Fills, held.Misses, held.Hits), Is.EqualTo((1L, 2L, 0L)));
        Assert.That(held.BytesRead, Is.GreaterThanOrEqualTo(s.TensorBytes));

        PoolRestoreResult second = RestoreThroughPool(path, d);
        Assert.That(second.Filled, Is.False);
        AssertRestored(d, s, data);
        PoolEntryInfo after = pool.List().Single();
        Assert.That((after.Fills, after.Hits, after.BytesRead), Is.EqualTo((1L, 1L, held.BytesRead)), "a hit reads nothing from the file");

        using var client = PoolClient.Connect(SocketPath);
        using JsonDocument status = client.Send(PoolProtocol.Write(w => w.WriteString("op", "status")));
        JsonElement entry = status.RootElement.GetProperty("snapshots")[0];
        Assert.That((entry.GetProperty("fills").GetInt64(), entry.GetProperty("misses").GetInt64(), entry.GetProperty("hits").GetInt64(),
            entry.GetProperty("bytes_read").GetInt64()), Is.EqualTo((1L, 2L, 1L, held.BytesRead)));
    }

    [Test]
    public void AFillOfACorruptRegionFailsAndHoldsNothing()
    {
        string path = Files.PathOf("corrupt.thaw");
        Freeze(path, 2);
        Snapshot s = SnapshotReader.Read(path);
        using (var f = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite))
        {
            byte[] one = new byte[1];
            long at = s.FileOffsetOf(s.Tensors[4]) + 17;
            RandomAccess.Read(f, one, at);
            one[0] ^= 0x40;
            RandomAccess.Write(f, one, at);
        }
        using SnapshotPool pool = Pool();
        using PoolServer server = Serve(pool);
        using SharedMapping d = Destination(s);
        Assert.That(() => RestoreThroughPool(path, d),
            Throws.InstanceOf<PoolUnavailableException>().With.Message.Contains("w4").And.Message.Contains("CRC32C"));
        Assert.That((pool.List().Count, pool.UsedBytes), Is.EqualTo((0, 0L)));
        // What the client falls back on names the tensor too.
        Assert.That(() => Engine.RestoreInto(s, Targets(d, s)), Throws.InstanceOf<ThawChecksumException>().With.Message.Contains("w4"));
    }

    [Test]
    public void AFillWhoseReadFailsHoldsNothingAndTheNextOneSucceeds()
    {
        string path = Files.PathOf("eio.thaw");
        List<byte[]> data = Freeze(path, 3);
        Snapshot s = SnapshotReader.Read(path);
        using SnapshotPool pool = Pool();
        using PoolServer server = Serve(pool);
        using SharedMapping d = Destination(s);
        Core.FaultInject(Core.FaultReadEio, 2);
        try
        {
            Assert.That(() => RestoreThroughPool(path, d), Throws.InstanceOf<PoolUnavailableException>());
        }
        finally
        {
            Assert.That(Core.FaultInject(Core.FaultNone, -1), Is.EqualTo(1), "the read fault fired once");
        }
        Assert.That((pool.List().Count, pool.UsedBytes), Is.EqualTo((0, 0L)));
        Assert.That(RestoreThroughPool(path, d).Filled, Is.True);
        AssertRestored(d, s, data);
    }

    [Test]
    public void ASnapshotLargerThanTheBudgetIsNotFilled()
    {
        string path = Files.PathOf("big.thaw");
        Freeze(path, 4);
        Snapshot s = SnapshotReader.Read(path);
        using SnapshotPool pool = Pool(budget: s.DataLength - 4096);
        using PoolServer server = Serve(pool);
        using SharedMapping d = Destination(s);
        Assert.That(() => RestoreThroughPool(path, d), Throws.InstanceOf<PoolUnavailableException>().With.Message.Contains("budget"));
        Assert.That(pool.List(), Is.Empty);
    }

    [Test]
    public void FillsOfOneSnapshotAtOnceShareOneRead()
    {
        string path = Files.PathOf("shared.thaw");
        List<byte[]> data = Freeze(path, 5);
        Snapshot s = SnapshotReader.Read(path);
        long oneRead;
        using (SnapshotPool alone = Pool())
        {
            alone.Load(path);
            oneRead = alone.List().Single().BytesRead;
        }
        using SnapshotPool pool = Pool();
        using PoolServer server = Serve(pool);
        const int clients = 8;
        var results = new PoolRestoreResult[clients];
        var destinations = Enumerable.Range(0, clients).Select(_ => Destination(s)).ToList();
        try
        {
            Parallel.For(0, clients, new ParallelOptions { MaxDegreeOfParallelism = clients }, i => results[i] = RestoreThroughPool(path, destinations[i]));
            foreach (SharedMapping d in destinations)
                AssertRestored(d, s, data);
        }
        finally
        {
            destinations.ForEach(d => d.Dispose());
        }
        PoolEntryInfo held = pool.List().Single();
        Assert.That((held.Fills, held.BytesRead, held.Hits), Is.EqualTo((1L, oneRead, clients - 1L)));
        Assert.That(results.Count(r => r.Filled), Is.EqualTo(1));
    }

    /// <summary>Replaces the snapshot's bytes by <paramref name="change"/>, then checks that the next
    /// restore returns the new bytes, that the old copy is gone, and that the server said why.</summary>
    private void AssertChangeIsNoticed(string name, Action<string, string> change)
    {
        string path = Files.PathOf(name);
        Freeze(path, 6);
        string replacement = Files.PathOf(name + ".next");
        List<byte[]> next = Freeze(replacement, 7);
        Assert.That(new FileInfo(replacement).Length, Is.EqualTo(new FileInfo(path).Length), "same size: only the identity tells them apart");
        using SnapshotPool pool = Pool();
        using PoolServer server = Serve(pool);
        using SharedMapping d = Destination(SnapshotReader.Read(path));
        Assert.That(RestoreThroughPool(path, d).Filled, Is.True);
        SnapshotIdentity old = SnapshotIdentity.Of(SnapshotReader.Read(path));

        change(path, replacement);

        Snapshot now = SnapshotReader.Read(path);
        Assert.That(now.HeaderCrc32C, Is.Not.EqualTo(old.HeaderCrc32C));
        PoolRestoreResult r = RestoreThroughPool(path, d);
        Assert.That(r.Filled, Is.True, "a changed file is a miss, filled anew");
        AssertRestored(d, now, next);
        Assert.That(pool.List().Single().Fills, Is.EqualTo(2));
        Assert.That(pool.UsedBytes, Is.EqualTo(now.DataLength), "the stale copy's memory is released");
        lock (_log)
            Assert.That(_log, Has.Some.Contains("changed on disk since the pool read it"));
    }

    [Test]
    public void AFileReplacedByRenameIsNotServedFromTheOldCopy() =>
        AssertChangeIsNoticed("renamed.thaw", (path, replacement) => File.Move(replacement, path, overwrite: true));

    [Test]
    public void AFileRewrittenInPlaceWithItsMtimeSetBackIsNotServedFromTheOldCopy() =>
        AssertChangeIsNoticed("inplace.thaw", (path, replacement) =>
        {
            DateTime mtime = File.GetLastWriteTimeUtc(path);
            using (var f = new FileStream(path, FileMode.Open, FileAccess.Write))
                f.Write(File.ReadAllBytes(replacement));
            File.SetLastWriteTimeUtc(path, mtime);
        });

    [Test]
    public void AFileTruncatedAndRegrownIsNotServedFromTheOldCopy() =>
        AssertChangeIsNoticed("regrown.thaw", (path, replacement) =>
        {
            File.WriteAllBytes(path, new byte[4096]);
            File.WriteAllBytes(path, File.ReadAllBytes(replacement));
        });

    [Test]
    public void AClientWithoutIdentityIsStillNeverServedAStaleCopy()
    {
        string path = Files.PathOf("old-client.thaw");
        Freeze(path, 8);
        string replacement = Files.PathOf("old-client.next");
        Freeze(replacement, 9);
        using SnapshotPool pool = Pool();
        using PoolServer server = Serve(pool);
        pool.Load(path);
        File.Move(replacement, path, overwrite: true);
        Snapshot s = SnapshotReader.Read(path);
        string file = ZeroFile(Files.PathOf("raw-dest"), s.DataLength);
        // The request of a client that sends no identity (and no fill): the pool compares its copy with the file on disk.
        string request = PoolProtocol.RestoreRequest(path,
            s.Tensors.Select(t => new PoolTarget(t.Name, Encoding.UTF8.GetBytes(Path.GetFileName(file)), t.Offset, t.Length)), fill: false);
        using var client = new PoolClient(SocketPath);
        Assert.That(() => client.Send(request), Throws.InstanceOf<FileNotFoundException>().With.Message.Contains("does not hold"));
        Assert.That(pool.List(), Is.Empty);
    }

    [Test]
    public void AClientThatParsedAnOlderFileFallsBack()
    {
        string path = Files.PathOf("raced.thaw");
        Freeze(path, 10);
        Snapshot parsedBefore = SnapshotReader.Read(path);
        string replacement = Files.PathOf("raced.next");
        Freeze(replacement, 11);
        using SnapshotPool pool = Pool();
        using PoolServer server = Serve(pool);
        using SharedMapping d = Destination(parsedBefore);
        File.Move(replacement, path, overwrite: true);
        pool.Load(path);
        using var client = PoolClient.Connect(SocketPath);
        // The client's header is the old file's; the pool holds the new one: neither is served to it.
        Assert.That(() => client.Restore(Engine, parsedBefore, Targets(d, parsedBefore)),
            Throws.InstanceOf<PoolUnavailableException>().With.Message.Contains("header_crc32c"));
        Assert.That(pool.List().Single().Hits, Is.Zero);
    }

    [Test]
    public void IdentityFieldsAreBoundedAndNamed()
    {
        using SnapshotPool pool = Pool();
        using PoolServer server = Serve(pool);
        using var client = new PoolClient(SocketPath);
        string Restore(string identity) =>
            $"{{\"op\":\"restore\",\"snapshot\":\"/x.thaw\",\"targets\":[],\"identity\":{identity}}}";
        const string good = "\"dev\":1,\"ino\":2,\"size\":3,\"mtime_ns\":-4,\"ctime_ns\":5";
        Assert.That(() => client.Send(Restore($"{{{good}}}")), Throws.InstanceOf<ThawException>().With.Message.Contains("identity: expected every field"));
        Assert.That(() => client.Send(Restore($"{{{good},\"header_crc32c\":4294967296}}")), Throws.InstanceOf<ThawException>().With.Message.Contains("identity.header_crc32c"));
        Assert.That(() => client.Send(Restore($"{{{good},\"header_crc32c\":1,\"dev\":2}}")), Throws.InstanceOf<ThawException>().With.Message.Contains("identity.dev: given twice"));
        Assert.That(() => client.Send(Restore($"{{{good.Replace("\"size\":3", "\"size\":-3")},\"header_crc32c\":1}}")), Throws.InstanceOf<ThawException>().With.Message.Contains("identity.size"));
        Assert.That(() => client.Send(Restore("[1]")), Throws.InstanceOf<ThawException>().With.Message.Contains("identity: expected an object"));
        Assert.That(() => client.Send("{\"op\":\"restore\",\"snapshot\":\"/x.thaw\",\"targets\":[],\"fill\":1}"), Throws.InstanceOf<ThawException>().With.Message.Contains("fill: expected true or false"));
        // Well formed: the file does not exist, so it is a miss (kind 3), not a malformed request.
        Assert.That(() => client.Send(Restore($"{{{good},\"header_crc32c\":1}}")), Throws.InstanceOf<FileNotFoundException>());
    }
}
