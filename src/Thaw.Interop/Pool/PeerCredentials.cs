using System.Net.Sockets;

namespace Thaw.Interop.Pool;

/// <summary>Who is at the other end of a Unix socket (SO_PEERCRED), and who we are.</summary>
public static class PeerCredentials
{
    private const int SolSocket = 1, SoPeerCred = 17;

    /// <summary>The peer's uid, or uint.MaxValue when the kernel does not say.</summary>
    public static uint PeerUid(Socket socket)
    {
        // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
        byte[] credentials = new byte[12];
        return socket.GetRawSocketOption(SolSocket, SoPeerCred, credentials) == 12 ? BitConverter.ToUInt32(credentials, 4) : uint.MaxValue;
    }

    /// <summary>This process's real uid.</summary>
    public static uint CurrentUid()
    {
        foreach (string line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("Uid:", StringComparison.Ordinal))
                return uint.Parse(line.Split('\t', StringSplitOptions.RemoveEmptyEntries)[1]);
        throw new InvalidOperationException("no Uid line in /proc/self/status");
    }
}
