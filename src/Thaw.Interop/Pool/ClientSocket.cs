using Thaw.Interop.Native;

namespace Thaw.Interop.Pool;

/// <summary>The socket a client talks to when it names none (thaw pool load/evict/status, and
/// libthaw's pool calls given no socket): <c>$THAW_POOL_SOCKET</c>, else this user's automatic
/// pool's when its socket exists (looked at, never started: asking is no reason to start a
/// pool), else <see cref="PoolProtocol.DefaultSocketPath"/>.</summary>
public static class ClientSocket
{
    /// <summary>The socket to talk to (docs/POOL.md, "Automatic mode", Status).</summary>
    public static string Default()
    {
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable("THAW_POOL_SOCKET")))
        {
            string auto = AutoPoolDirectory.SocketPath();
            if (PosixPaths.Identity(auto) is not null)
                return auto;
        }
        return PoolProtocol.DefaultSocketPath();
    }
}
