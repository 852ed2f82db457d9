using System.Text;
using System.Text.Json;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Pool;
using Thaw.Interop.Restore;

namespace Thaw.Tests;

/// <summary>Issue 19 item 1 and issue 14 item 4: the pool serves every device of the node, each
/// restore on the engine of the device its client names (mock ordinals standing in for GPUs), an
/// unknown device refused with nothing written; the handles of a restore opened and
/// closed behind its copies, with the breakdown of its time in the response and in the client's result.</summary>
public class PoolDeviceTests : PoolFixture
{
    private SnapshotPool _pool = null!;
    private PoolServer _server = null!;
    private Snapshot _snapshot = null!;
    private List<byte[]> _data = null!;
    private string _shm = "";

    [SetUp]
    public void SetUp()
    {
        (_snapshot, _data) = FreezeTensors(Files.PathOf("s.thaw"), 6, DType.BF16, i => 3000 + 700 * i, i => 60 + i);
        _shm = Directory.CreateDirectory(Files.PathOf("shm")).FullName;
        _pool = new SnapshotPool(Engine, 64 << 20);
        _pool.Load(_snapshot.Path);
        _server = Serve(_pool, _shm);
    }

    [TearDown]
    public void TearDown()
    {
        _server.Dispose();
        _pool.Dispose();
    }

    private List<RestoreTarget> TargetsIn(SharedMapping memory) =>
        _snapshot.Tensors.Select(t => new RestoreTarget(t.Name, memory.Address + (ulong)t.Offset, t.Length, t.DType, t.Shape.ToArray())).ToList();

    private void AssertRestored(string file)
    {
        byte[] bytes = File.ReadAllBytes(file);
        for (int i = 0; i < _data.Count; i++)
            Assert.That(bytes.AsSpan((int)_snapshot.Tensors[i].Offset, _data[i].Length).SequenceEqual(_data[i]), $"{file}: tensor {i}");
    }

    private Dictionary<string, (long Restores, long Bytes)> DevicesServed()
    {
        using var client = new PoolClient(_server.SocketPath);
        using JsonDocument status = client.Send("{\"op\":\"status\"}");
        return status.RootElement.GetProperty("devices").EnumerateArray().ToDictionary(
            d => d.GetProperty("device").GetString()!, d => (d.GetProperty("restores").GetInt64(), d.GetProperty("bytes").GetInt64()));
    }

    [Test]
    public void TwoClientsOnTwoMockDevicesAtOnceAreEachServedOnTheirOwnDevice()
    {
        using var one = ThawEngine.Create(DeviceKind.Mock, 1);
        using var zeroMemory = new SharedMapping(Path.Combine(_shm, "device0"), _snapshot.DataLength);
        using var oneMemory = new SharedMapping(Path.Combine(_shm, "device1"), _snapshot.DataLength);
        PoolRestoreResult Restore(ThawEngine engine, SharedMapping memory)
        {
            using var client = PoolClient.Connect(_server.SocketPath);
            return client.Restore(engine, _snapshot, TargetsIn(memory));
        }
        for (int round = 0; round < 3; round++)
        {
            var zero = Task.Run(() => Restore(Engine, zeroMemory));
            var other = Task.Run(() => Restore(one, oneMemory));
            Assert.That((zero.Result.Device, other.Result.Device), Is.EqualTo(("mock-0", "mock-1")));
        }
        AssertRestored(zeroMemory.Path);
        AssertRestored(oneMemory.Path);
        var served = DevicesServed();
        Assert.That(served["mock-0"], Is.EqualTo((3L, 3 * _snapshot.TensorBytes)));
        Assert.That(served["mock-1"], Is.EqualTo((3L, 3 * _snapshot.TensorBytes)));
        Assert.That(_pool.Devices.Select(d => (d.Device, d.Ordinal)), Is.EqualTo(new[] { ("mock-0", 0), ("mock-1", 1) }));
    }

    private string Request(string handle, string? deviceJson) =>
        "{\"op\":\"restore\",\"snapshot\":" + JsonSerializer.Serialize(_snapshot.Path) + (deviceJson is null ? "" : ",\"device\":" + deviceJson) +
        ",\"targets\":[" + string.Join(",", _snapshot.Tensors.Select(t =>
            $"{{\"name\":\"{t.Name}\",\"handle\":\"{Convert.ToBase64String(Encoding.UTF8.GetBytes(handle))}\",\"offset\":{t.Offset},\"capacity\":{t.Length}}}")) + "]}";

    [Test]
    public void AnUnknownDeviceIsRefusedByNameWithNothingWritten()
    {
        string file = ZeroFile(Path.Combine(_shm, "dest"), _snapshot.DataLength);
        using var client = new PoolClient(_server.SocketPath);
        // A constraint expression grows with each use: one made afresh per assertion.
        NUnit.Framework.Constraints.ResolvableConstraintExpression Refused(ThawErrorKind kind) =>
            Throws.InstanceOf<ThawException>().With.Property(nameof(ThawException.Kind)).EqualTo(kind).And.Message;
        Assert.That(() => client.Send(Request("dest", "\"GPU-00000000-0000-0000-0000-000000000000\"")),
            Refused(ThawErrorKind.Mismatch).Contains("'GPU-00000000-0000-0000-0000-000000000000' is no device this pool serves").And.Message.Contains("mock-7"));
        Assert.That(() => client.Send(Request("dest", "\"mock-8\"")), Refused(ThawErrorKind.Mismatch).Contains("'mock-8'"));
        Assert.That(File.ReadAllBytes(file).All(b => b == 0), "nothing was written for an unknown device");
        foreach (string bad in new[] { "7", "\"\"", "\"mock 1\"", "\"mock-\\u00e9\"", JsonSerializer.Serialize(new string('x', 129)), "null" })
            Assert.That(() => client.Send(Request("dest", bad)), Refused(ThawErrorKind.InvalidArgument).StartWith("device:"), bad);
        Assert.That(() => client.Send(Request("dest", "\"mock-1\",\"device\":\"mock-1\"")), Refused(ThawErrorKind.InvalidArgument).Contains("device: given twice"));
        Assert.That(File.ReadAllBytes(file).All(b => b == 0));
        Assert.That(DevicesServed().Keys, Is.EqualTo(new[] { "mock-0" }), "no engine was opened for a refused device");

        // A client that names no device (older ones) is served on the pool's default device.
        client.Send(Request("dest", null)).Dispose();
        AssertRestored(file);
        Assert.That(DevicesServed()["mock-0"].Restores, Is.EqualTo(1));
    }

    [Test]
    public void TheResponseAndTheClientsResultSayWhereTheTimeWent()
    {
        string file = ZeroFile(Path.Combine(_shm, "dest"), _snapshot.DataLength);
        using (var client = new PoolClient(_server.SocketPath))
        using (JsonDocument response = client.Send(Request("dest", "\"mock-0\"")))
        {
            JsonElement r = response.RootElement;
            double seconds = r.GetProperty("seconds").GetDouble();
            double[] parts = new[] { "open_s", "wait_s", "copy_s", "close_s" }.Select(k => r.GetProperty(k).GetDouble()).ToArray();
            Assert.That(parts, Has.All.GreaterThanOrEqualTo(0.0));
            Assert.That(parts[0], Is.GreaterThan(0.0), "opening a handle takes time");
            Assert.That(parts.Sum(), Is.LessThanOrEqualTo(seconds));
            Assert.That((r.GetProperty("device").GetString(), r.GetProperty("lanes").GetInt32(), r.GetProperty("allocations").GetInt32()),
                Is.EqualTo(("mock-0", 2, 1)));
        }
        using var memory = new SharedMapping(Path.Combine(_shm, "mapped"), _snapshot.DataLength);
        using var mapped = PoolClient.Connect(_server.SocketPath);
        PoolRestoreResult result = mapped.Restore(Engine, _snapshot, TargetsIn(memory));
        PoolRestoreTimings t = result.Timings;
        Assert.That(t.ResolveSeconds, Is.GreaterThan(0.0));
        Assert.That(t.PoolSeconds, Is.GreaterThan(0.0));
        Assert.That(t.ResolveSeconds + t.RequestSeconds + t.PoolSeconds, Is.EqualTo(result.Seconds).Within(1e-9));
        Assert.That(t.OpenSeconds + t.WaitSeconds + t.CopySeconds + t.CloseSeconds, Is.LessThanOrEqualTo(t.PoolSeconds));
        AssertRestored(memory.Path);
    }

    private static int OpenDescriptors() => Directory.GetFiles("/proc/self/fd").Length;

    [Test]
    public void ManyAllocationsAreBoundedEachAndAllClosedAfter()
    {
        // One allocation per tensor, as torch gives large tensors: every handle a file of its own.
        string[] names = _snapshot.Tensors.Select((t, i) => $"alloc{i}").ToArray();
        for (int i = 0; i < names.Length; i++)
            ZeroFile(Path.Combine(_shm, names[i]), _snapshot.Tensors[i].Length + 100);
        string RequestOf(Func<int, long> offset) =>
            PoolProtocol.RestoreRequest(_snapshot.Path, _snapshot.Tensors.Select((t, i) =>
                new PoolTarget(t.Name, Encoding.UTF8.GetBytes(names[i]), offset(i), t.Length)), fill: false, "mock-0");
        using var client = new PoolClient(_server.SocketPath);
        using (JsonDocument first = client.Send(RequestOf(_ => 50))) // a first one, so that lazily made state is not counted as a leak
            Assert.That(first.RootElement.GetProperty("allocations").GetInt32(), Is.EqualTo(names.Length));
        int descriptors = OpenDescriptors();
        for (int round = 0; round < 5; round++)
            client.Send(RequestOf(_ => 100)).Dispose();
        for (int i = 0; i < names.Length; i++)
            Assert.That(File.ReadAllBytes(Path.Combine(_shm, names[i])).AsSpan(100).SequenceEqual(_data[i]), $"tensor {i}");
        Assert.That(OpenDescriptors(), Is.EqualTo(descriptors), "every handle was closed");

        // The last allocation's target runs one byte past its end: refused, named, nothing written there.
        int last = names.Length - 1;
        File.WriteAllBytes(Path.Combine(_shm, names[last]), new byte[_snapshot.Tensors[last].Length + 100]);
        Assert.That(() => client.Send(RequestOf(i => i == last ? 101 : 100)), Throws.InstanceOf<ThawException>()
            .With.Message.Contains($"tensor '{_snapshot.Tensors[last].Name}'").And.Message.Contains("runs past the end of its allocation"));
        Assert.That(File.ReadAllBytes(Path.Combine(_shm, names[last])).All(b => b == 0));
        File.Delete(Path.Combine(_shm, names[2]));
        Assert.That(() => client.Send(RequestOf(_ => 100)), Throws.InstanceOf<ThawException>()
            .With.Message.Contains($"tensor '{_snapshot.Tensors[2].Name}'").And.Message.Contains("No such file"));
        Assert.That(OpenDescriptors(), Is.EqualTo(descriptors), "every handle was closed after the refusals too");
    }
}
