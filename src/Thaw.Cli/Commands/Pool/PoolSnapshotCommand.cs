using System.CommandLine;
using System.Text.Json;
using Thaw.Cli.Options;
using Thaw.Interop.Pool;

namespace Thaw.Cli.Commands.Pool;

/// <summary>thaw pool load|evict SNAPSHOT: one request naming one snapshot.</summary>
internal sealed class PoolSnapshotCommand : Command
{
    private readonly Argument<string> _snapshot = Flags.Path("snapshot", "the snapshot file");
    private readonly Option<string> _socket = PoolCommand.SocketOption();

    public PoolSnapshotCommand(string verb, string description) : base(verb, description)
    {
        Add(_snapshot);
        Add(_socket);
        SetAction(Run);
    }

    private int Run(ParseResult parse)
    {
        string snapshot = System.IO.Path.GetFullPath(parse.GetRequiredValue(_snapshot));
        using var client = PoolCommand.Connect(PoolCommand.ClientSocket(parse, _socket));
        using JsonDocument r = client.Send(PoolProtocol.Write(w => { w.WriteString("op", Name); w.WriteString("snapshot", snapshot); }));
        Console.Out.WriteLine(Name == "load"
            ? $"pool holds {snapshot} ({Units.Size(r.RootElement.GetProperty("bytes").GetInt64())})"
            : r.RootElement.GetProperty("evicted").GetBoolean() ? $"evicted {snapshot}" : $"{snapshot} was not held (or is in use)");
        return 0;
    }
}
