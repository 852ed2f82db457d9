using System.CommandLine;
using Thaw.Cli.Options;

namespace Thaw.Cli.Commands;

internal sealed class GenerateCommand : Command
{
    private readonly Argument<string> _directory = Flags.Path("directory", "where to write the checkpoint");
    private readonly Option<long> _sizeMib = Flags.Integer("--size-mib", "total tensor bytes, in MiB", 1024, 16, 1 << 24);
    private readonly Option<long> _shards = Flags.Integer("--shards", "number of .safetensors files", 2, 1, 10000);
    private readonly Option<long> _seed = Flags.Integer("--seed", "seed of the generated values", 1, 0, int.MaxValue);
    private readonly Option<bool> _quiet = Flags.Switch("--quiet", "no progress on stderr");

    public GenerateCommand() : base("generate", "write a synthetic Llama-shaped safetensors checkpoint")
    {
        Add(_directory);
        Add(_sizeMib);
        Add(_shards);
        Add(_seed);
        Add(_quiet);
        SetAction(Run);
    }

    private int Run(ParseResult parse)
    {
        string directory = parse.GetRequiredValue(_directory);
        int shards = (int)parse.GetValue(_shards);
        var progress = new ProgressReporter("generate", parse.GetValue(_quiet));
        long bytes = CheckpointGenerator.Generate(directory, parse.GetValue(_sizeMib) << 20, shards, (int)parse.GetValue(_seed), progress.Callback);
        progress.Done();
        Console.Out.WriteLine($"generated {directory}: Llama-shaped safetensors checkpoint, {Units.Size(bytes)} in {shards} shard(s)");
        return 0;
    }
}
