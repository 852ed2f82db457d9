using System.CommandLine;
using Thaw.Cli.Options;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;
using Thaw.Interop.Safetensors;

namespace Thaw.Cli.Commands;

internal sealed class ConvertCommand : Command
{
    private readonly Argument<string> _checkpoint = Flags.Path("checkpoint", "a Hugging Face checkpoint directory or one .safetensors file");
    private readonly Argument<string> _output = Flags.Path("output", "the snapshot to write (replaced atomically)");
    private readonly EngineFlags _engine = new(() => DeviceKind.Mock, "device of the engine that reads the checkpoint (default: mock)");
    private readonly Option<bool> _quiet = Flags.Switch("--quiet", "no progress on stderr");

    public ConvertCommand() : base("convert", "convert a safetensors checkpoint into a snapshot; no GPU needed")
    {
        Add(_checkpoint);
        Add(_output);
        _engine.AddTo(this);
        Add(_quiet);
        SetAction(Run);
    }

    private int Run(ParseResult parse)
    {
        string checkpoint = parse.GetRequiredValue(_checkpoint);
        var progress = new ProgressReporter("convert", parse.GetValue(_quiet));
        using ThawEngine engine = _engine.Create(parse);
        var started = DateTime.UtcNow;
        Snapshot snapshot = CheckpointConverter.Convert(checkpoint, parse.GetRequiredValue(_output), engine, progress.Callback);
        progress.Done();
        double seconds = (DateTime.UtcNow - started).TotalSeconds;
        Console.Out.WriteLine($"converted {checkpoint} -> {snapshot.Path}: {snapshot.Tensors.Count} tensors, " +
            $"{Units.Size(snapshot.TensorBytes)} in {seconds:F2} s ({snapshot.TensorBytes / seconds / 1e9:F2} GB/s)");
        return 0;
    }
}
