using System.Text;
using System.Text.Json;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Pool;
using Thaw.Interop.Restore;

namespace Thaw.Tests;

/// <summary>Issue 11, items 1 and 2: a restore target is bounded by the real size of what its
/// handle opens, every numeric field is checked, and a mock handle reaches only a file of
/// the peer inside the pool's directory. After each refusal a good restore still works.</summary>
public class PoolBoundsTests : PoolFixture
{
    private SnapshotPool _pool = null!;
    private PoolServer _server = null!;
    private PoolClient _client = null!;
    private Snapshot _snapshot = null!;
    private List<byte[]> _data = null!;
    private string _shm = "";

    [SetUp]
    public void SetUp()
    {
        (_snapshot, _data) = FreezeTensors(Files.PathOf("s.thaw"), 3, DType.BF16, i => 2000 + 500 * i, i => 40 + i);
        _shm = Directory.CreateDirectory(Files.PathOf("shm")).FullName;
        _pool = new SnapshotPool(Engine, 64 << 20);
        _pool.Load(_snapshot.Path);
        _server = Serve(_pool, _shm);
        _client = new PoolClient(_server.SocketPath);
    }

    [TearDown]
    public void TearDown()
    {
        _client.Dispose();
        _server.Dispose();
        _pool.Dispose();
    }

    /// <summary>The pool's refusal of a destination, as its client sees it (error kind 7).</summary>
    private static NUnit.Framework.Constraints.ResolvableConstraintExpression Mismatch =>
        Throws.InstanceOf<ThawException>().With.Property(nameof(ThawException.Kind)).EqualTo(ThawErrorKind.Mismatch).And.Message;

    private string SharedFile(long length)
    {
        string name = $"dest-{Guid.NewGuid():N}";
        ZeroFile(Path.Combine(_shm, name), length);
        return name;
    }

    /// <summary>A restore of every tensor; <paramref name="edit"/> may rewrite target 0's fields as raw JSON.</summary>
    private string Request(string handle, Func<TensorEntry, (string Offset, string Capacity)>? first = null) =>
        "{\"op\":\"restore\",\"snapshot\":" + JsonSerializer.Serialize(_snapshot.Path) + ",\"targets\":[" +
        string.Join(",", _snapshot.Tensors.Select((t, i) =>
        {
            var (offset, capacity) = i == 0 && first is not null ? first(t) : (t.Offset.ToString(), t.Length.ToString());
            return $"{{\"name\":\"{t.Name}\",\"handle\":\"{Convert.ToBase64String(Encoding.UTF8.GetBytes(handle))}\",\"offset\":{offset},\"capacity\":{capacity}}}";
        })) + "]}";

    private void AssertAGoodClientIsServed()
    {
        string name = SharedFile(_snapshot.DataLength);
        _client.Send(Request(name)).Dispose();
        byte[] bytes = File.ReadAllBytes(Path.Combine(_shm, name));
        for (int i = 0; i < _data.Count; i++)
            Assert.That(bytes.AsSpan((int)_snapshot.Tensors[i].Offset, _data[i].Length).SequenceEqual(_data[i]), $"tensor {i}");
    }

    [Test]
    public void OffsetsAndCapacitiesPastTheAllocationAreRefusedBeforeAnyCopy()
    {
        string name = SharedFile(_snapshot.DataLength);
        long fileLength = _snapshot.DataLength;
        var cases = new (string Offset, string Capacity, string Expect)[]
        {
            (long.MaxValue.ToString(), "{len}", "runs past the end"),           // the SIGSEGV of the issue
            ((long.MaxValue - 10).ToString(), long.MaxValue.ToString(), "runs past the end"),
            (fileLength.ToString(), "{len}", "runs past the end"),              // just past the end
            ((fileLength - 1).ToString(), "{len}", "runs past the end"),
            ("0", (fileLength + 1).ToString(), "runs past the end"),            // claims more than the file holds
            ("0", long.MaxValue.ToString(), "runs past the end"),
            ("0", "0", "holds 0 bytes"),                                        // smaller than the tensor
        };
        foreach (var (offset, capacity, expect) in cases)
        {
            string request = Request(name, t => (offset, capacity.Replace("{len}", t.Length.ToString())));
            Assert.That(() => _client.Send(request), Mismatch.Contains(expect),
                $"offset {offset} capacity {capacity}");
        }
        Assert.That(File.ReadAllBytes(Path.Combine(_shm, name)).All(b => b == 0), "nothing was written by a refused restore");

        string small = SharedFile(100); // a tensor larger than the whole file
        Assert.That(() => _client.Send(Request(small)), Mismatch.Contains("allocation of 100 bytes"));
        AssertAGoodClientIsServed();
    }

    [Test]
    public void EveryNumericFieldIsAWholeNonNegativeNumber()
    {
        string name = SharedFile(_snapshot.DataLength);
        string[] bad = ["-1", "1.5", "1e3", "1.0", "\"12\"", "null", "true", "[]", "{}", "9223372036854775808",
            "18446744073709551616", "1e400", "-9223372036854775808", "0x10"];
        foreach (string field in new[] { "offset", "capacity" })
            foreach (string value in bad)
            {
                string request = Request(name, t => field == "offset" ? (value, t.Length.ToString()) : (t.Offset.ToString(), value));
                var refused = Throws.InstanceOf<ThawException>();
                Assert.That(() => _client.Send(request), value == "0x10" ? refused : refused.With.Message.Contains($"targets[0].{field}"),
                    $"{field} = {value}");
            }
        Assert.That(() => _client.Send(Request(name).Replace("\"offset\":0,", "")), Throws.InstanceOf<ThawException>().With.Message.Contains("no field 'offset'"));
        Assert.That(() => _client.Send("{\"op\":\"restore\",\"snapshot\":" + JsonSerializer.Serialize(_snapshot.Path) + ",\"targets\":7}"),
            Throws.InstanceOf<ThawException>().With.Message.Contains("targets"));
        Assert.That(() => _client.Send("{\"op\":7}"), Throws.InstanceOf<ThawException>().With.Message.Contains("op"));
        Assert.That(() => _client.Send("[1,2]"), Throws.InstanceOf<ThawException>().With.Message.Contains("JSON object"));
        Assert.That(() => _client.Send("{\"op\":\"load\",\"snapshot\":\"relative.thaw\"}"), Throws.InstanceOf<ThawException>().With.Message.Contains("absolute"));
        AssertAGoodClientIsServed();
    }

    [Test]
    public void MockHandlesReachOnlyThePeersFilesInsideThePoolsDirectory()
    {
        string outside = Files.PathOf("outside-victim");
        File.WriteAllBytes(outside, new byte[_snapshot.DataLength]);
        string link = Path.Combine(_shm, "link");
        File.CreateSymbolicLink(link, outside);
        Directory.CreateDirectory(Path.Combine(_shm, "sub"));
        var cases = new (string Handle, string Expect)[]
        {
            (outside, "not a file name"),             // an absolute path anywhere: the confused deputy of the issue
            ("../outside-victim", "not a file name"),
            ("..", "not a file name"),
            ("link", "symbolic link"),
            ("sub", "Is a directory"),
            ("missing", "No such file"),
            ("a\0b", "not a file name"),
        };
        foreach (var (handle, expect) in cases)
            Assert.That(() => _client.Send(Request(handle)), Throws.InstanceOf<ThawException>().With.Message.Contains(expect), handle);
        Assert.That(File.ReadAllBytes(outside).All(b => b == 0), "the file outside the directory is untouched");
        AssertAGoodClientIsServed();
    }

    [Test]
    public void AFileOfAnotherUserIsRefused()
    {
        if (PeerCredentials.CurrentUid() != 0)
            Assert.Ignore("needs root to give a file to another uid (CI runs as root)");
        string name = SharedFile(_snapshot.DataLength);
        Chown(Path.Combine(_shm, name), 65534);
        Assert.That(() => _client.Send(Request(name)), Mismatch.Contains("belongs to uid 65534"));
        Assert.That(File.ReadAllBytes(Path.Combine(_shm, name)).All(b => b == 0));
        AssertAGoodClientIsServed();
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "chown", SetLastError = true)]
    private static extern int ChownNative(string path, uint owner, uint group);

    private static void Chown(string path, uint uid)
    {
        if (ChownNative(path, uid, uid) != 0)
            throw new IOException($"chown {path}: errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()}");
    }
}
