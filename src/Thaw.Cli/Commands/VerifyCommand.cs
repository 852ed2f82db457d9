using System.CommandLine;
using Thaw.Cli.Options;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;

namespace Thaw.Cli.Commands;

internal sealed class VerifyCommand : Command
{
    private readonly Argument<string> _snapshot = Flags.Path("snapshot", "the snapshot file");
    private readonly EngineFlags _engine = new(() => DeviceKind.Mock, "device of the engine that reads the snapshot (default: mock)");
    private readonly Option<bool> _quiet = Flags.Switch("--quiet", "no progress on stderr");

    public VerifyCommand() : base("verify", "check the header and every region's CRC32C")
    {
        Add(_snapshot);
        _engine.AddTo(this);
        Add(_quiet);
        SetAction(Run);
    }

    private int Run(ParseResult parse)
    {
        var progress = new ProgressReporter("verify", parse.GetValue(_quiet));
        using ThawEngine engine = _engine.Create(parse);
        Snapshot snapshot = SnapshotReader.Read(parse.GetRequiredValue(_snapshot));
        using var cancel = Interrupt.CancelOnCtrlC();
        RestoreResult r = engine.Verify(snapshot, progress.Callback, cancel.Token);
        progress.Done();
        Thaw.Interop.Kv.KvSnapshot.VerifyIfKv(snapshot);  // a KV snapshot: its prefix hashes against its token ids
        Console.Out.WriteLine($"ok: {snapshot.Path}: header and {snapshot.Tensors.Count} region checksums verified, " +
            $"{Units.Size(r.BytesRead)} read in {r.Seconds:F2} s ({r.BytesRead / r.Seconds / 1e9:F2} GB/s)");
        return 0;
    }
}
