using System.Text;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Native;
using Thaw.Interop.Restore;
using Thaw.Interop.Safetensors;

namespace Thaw.Cli;

internal static class Program
{
    private const string Usage = """
        usage: thaw <command> [options]

        commands:
          convert <checkpoint> <out.thaw>   convert a Hugging Face safetensors checkpoint (a directory
                                            or one .safetensors file) into a snapshot; no GPU needed
          info <snapshot> [--tensors]       tensors, dtypes, sizes and totals of a snapshot
          verify <snapshot>                 check the header and every region's CRC32C
          restore <snapshot>                restore into memory the engine allocates, and time it
              --device mock|cuda            (default: cuda when a GPU is present, else mock)
              --ordinal N                   GPU index (default 0)
              --io auto|buffered|direct     (default auto: buffered when in page cache)
              --verify                      check CRC32C while restoring
              --check                       read the restored bytes back and compare their checksums
              --repeat N                    restore N times and report each and the median
              --pool SOCKET                 restore through a running pool (falls back to the file)
          pool serve [--socket P] [--device mock|cuda] [--budget-mib N] [--allow-uids U,V] [--shm-dir D]
                                            hold snapshots in pinned memory and serve restores
          pool load|evict <snapshot> [--socket P]   pool list|status [--socket P]
          generate <dir> [--size-mib N] [--shards N] [--seed N]
                                            write a synthetic Llama-shaped safetensors checkpoint

        engine options (convert, verify, restore):
          --threads N  --chunk-mib N  --staging-mib N   (defaults: a thread a core up to 16, 8 MiB, 512 MiB)
          --quiet                           no progress on stderr
        """;

    private static readonly HashSet<string> Switches = new(StringComparer.Ordinal) { "tensors", "verify", "check", "quiet", "help" };

    public static int Main(string[] args)
    {
        if (args.Length == 0 || args[0] is "help" or "--help" or "-h")
        {
            Console.Out.Write(Usage);
            return args.Length == 0 ? 2 : 0;
        }
        if (args[0] is "--version" or "version")
        {
            Console.Out.WriteLine("thaw 0.1.0 (snapshot format v1)");
            return 0;
        }
        try
        {
            var arguments = new Arguments(args.Skip(1), Switches);
            return args[0] switch
            {
                "convert" => Commands.Convert(arguments),
                "info" => Commands.Info(arguments),
                "verify" => Commands.Verify(arguments),
                "restore" => Commands.Restore(arguments),
                "generate" => Commands.Generate(arguments),
                "pool" => PoolCommands.Run(arguments),
                _ => throw new UsageException($"unknown command '{args[0]}'"),
            };
        }
        catch (UsageException e)
        {
            Console.Error.WriteLine($"thaw: {e.Message}");
            Console.Error.WriteLine("run 'thaw help' for usage");
            return 2;
        }
        catch (Exception e) when (e is ThawException or IOException or UnauthorizedAccessException or ArgumentException or OperationCanceledException)
        {
            Console.Error.WriteLine($"thaw: error: {e.Message}");
            return 1;
        }
    }
}
