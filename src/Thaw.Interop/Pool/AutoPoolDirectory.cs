using Thaw.Interop.Native;

namespace Thaw.Interop.Pool;

/// <summary>The automatic pool's per-user directory (docs/POOL.md, "Automatic mode"):
/// <c>$XDG_RUNTIME_DIR/thaw</c> when that is a private directory of ours, else <c>/tmp/thaw-UID</c>;
/// made 0700 and checked with lstat before every use.</summary>
public static class AutoPoolDirectory
{
    /// <summary>The files inside the directory: the socket, the starters' lock, the pool's log.</summary>
    public const string SocketName = "pool.sock", LockName = "pool.lock", LogName = "pool.log";

    /// <summary>Where this user's automatic pool lives (not yet checked).</summary>
    public static string Choose()
    {
        string? runtime = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR");
        // The XDG spec's directory is the user's own, 0700; anything else is not trusted with a socket.
        if (!string.IsNullOrEmpty(runtime) && Path.IsPathRooted(runtime) && PosixPaths.PrivateDirectoryFault(runtime, create: false) is null)
            return Path.Combine(runtime, "thaw");
        return $"/tmp/thaw-{PeerCredentials.CurrentUid()}";
    }

    /// <summary>Makes <paramref name="directory"/> when absent; null when it is a real directory of
    /// ours that nobody else may enter, else why it is refused.</summary>
    public static string? Prepare(string directory) => PosixPaths.PrivateDirectoryFault(directory, create: true);

    /// <summary>The automatic pool's socket in the chosen directory.</summary>
    public static string SocketPath() => Path.Combine(Choose(), SocketName);
}
