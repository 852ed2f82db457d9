using System.CommandLine;
using System.Text.Json;
using Thaw.Cli.Options;
using Thaw.Interop.Pool;

namespace Thaw.Cli.Commands.Pool;

internal sealed class PoolStatusCommand : Command
{
    private readonly Option<string> _socket = PoolCommand.SocketOption();
    private readonly Option<bool> _json = Flags.Switch("--json", "print the pool's status reply as one JSON object, with its socket");

    public PoolStatusCommand() : base("status", "memory used, and hits and bytes served per snapshot")
    {
        Aliases.Add("list");
        Add(_socket);
        Add(_json);
        SetAction(Run);
    }

    private int Run(ParseResult parse)
    {
        string socket = PoolCommand.ClientSocket(parse, _socket);
        using var client = PoolCommand.Connect(socket);
        using JsonDocument r = client.Send(PoolProtocol.Write(w => w.WriteString("op", "status")));
        JsonElement root = r.RootElement;
        if (parse.GetValue(_json))
        {
            Console.Out.WriteLine(PoolProtocol.Write(w =>
            {
                w.WriteString("socket", socket);
                foreach (JsonProperty p in root.EnumerateObject().Where(p => p.Name is not ("ok" or "socket")))
                    p.WriteTo(w);
            }));
            return 0;
        }
        Console.Out.WriteLine($"pool {socket}: {Units.Size(root.GetProperty("used_bytes").GetInt64())} of {Units.Size(root.GetProperty("budget_bytes").GetInt64())} used");
        foreach (JsonElement s in root.GetProperty("snapshots").EnumerateArray())
            Console.Out.WriteLine($"  {s.GetProperty("snapshot").GetString()}  {Units.Size(s.GetProperty("bytes").GetInt64())}  " +
                $"{s.GetProperty("hits").GetInt64()} hits  {s.GetProperty("misses").GetInt64()} misses  {s.GetProperty("fills").GetInt64()} fills  " +
                $"{Units.Size(s.GetProperty("bytes_served").GetInt64())} served");
        if (root.TryGetProperty("devices", out JsonElement devices))
            foreach (JsonElement d in devices.EnumerateArray())
                Console.Out.WriteLine($"  device {d.GetProperty("device").GetString()}  {d.GetProperty("restores").GetInt64()} restores  " +
                    $"{Units.Size(d.GetProperty("bytes").GetInt64())} served");
        return 0;
    }
}
