using System.CommandLine;
using System.Reflection;
using Thaw.Cli.Commands.Pool;
using Thaw.Interop.Format;

namespace Thaw.Cli.Commands;

internal static class ThawRootCommand
{
    public static RootCommand Create()
    {
        var root = new RootCommand("thaw: snapshot model weights into a transfer-friendly file and restore them into GPU memory at the hardware's speed")
        {
            new ConvertCommand(),
            new InfoCommand(),
            new VerifyCommand(),
            new RestoreCommand(),
            new PoolCommand(),
            new GenerateCommand(),
            new FreezeCommand(),
            new CompletionCommand(),
        };
        foreach (Option option in root.Options)
        {
            if (option is VersionOption version)
                version.Action = new PrintVersion();
        }
        return root;
    }

    public static string Version()
    {
        string version = typeof(ThawRootCommand).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "0";
        int plus = version.IndexOf('+');
        return $"thaw {(plus >= 0 ? version[..plus] : version)} (snapshot format v{SnapshotFormat.Version})";
    }

    private sealed class PrintVersion : System.CommandLine.Invocation.SynchronousCommandLineAction
    {
        public override int Invoke(ParseResult parseResult)
        {
            Console.Out.WriteLine(Version());
            return 0;
        }
    }
}
