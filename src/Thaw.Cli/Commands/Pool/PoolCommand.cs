using System.CommandLine;
using Thaw.Cli.Options;
using Thaw.Interop.Pool;

namespace Thaw.Cli.Commands.Pool;

/// <summary>thaw pool serve|load|evict|status (list).</summary>
internal sealed class PoolCommand : Command
{
    public PoolCommand() : base("pool", "a per-node pool that holds snapshots in pinned memory and serves restores (docs/POOL.md)")
    {
        Add(new PoolServeCommand());
        Add(new PoolSnapshotCommand("load", "read a snapshot, check every CRC32C and hold it in the pool"));
        Add(new PoolSnapshotCommand("evict", "release a snapshot the pool holds (unless a restore is using it)"));
        Add(new PoolStatusCommand());
    }

    public static Option<string> SocketOption() =>
        Flags.Text("--socket", $"the pool's socket (default: $THAW_POOL_SOCKET, else the automatic pool's when it exists, else {PoolProtocol.DefaultSocketPath()})", "PATH");

    public static string Socket(ParseResult parse, Option<string> option) => parse.GetValue(option) ?? PoolProtocol.DefaultSocketPath();

    /// <summary>The socket a client command talks to: --socket, else <see cref="Thaw.Interop.Pool.ClientSocket.Default"/>.</summary>
    public static string ClientSocket(ParseResult parse, Option<string> option) => parse.GetValue(option) ?? Thaw.Interop.Pool.ClientSocket.Default();

    public static PoolClient Connect(string socket)
    {
        try
        {
            return new PoolClient(socket);
        }
        catch (System.Net.Sockets.SocketException e)
        {
            throw new IOException($"no pool is serving on {socket} ({e.Message}); start one with 'thaw pool serve'");
        }
    }
}
