using System.Text.Json;
using Thaw.Interop.Native;

namespace Thaw.Interop.Pool;

/// <summary>What a socket path turned out to be when asked.</summary>
public enum ProbeState
{
    /// <summary>Nothing at the path.</summary>
    Absent,
    /// <summary>A file nobody listens on (a pool that died): safe to replace.</summary>
    Stale,
    /// <summary>Served by another uid: never used, never touched.</summary>
    Foreign,
    /// <summary>Ours, and accepting, but it did not answer ping in time.</summary>
    Silent,
    /// <summary>Ours, answering.</summary>
    Answers,
}

/// <summary>The answer of one probe: the state, the server's uid (SO_PEERCRED) when connected, and why.</summary>
public sealed record PoolProbe(ProbeState State, uint Uid, string Detail)
{
    /// <summary>Connects to <paramref name="socket"/>, checks who serves it before sending a byte,
    /// then pings with a bounded wait.</summary>
    public static PoolProbe Check(string socket, TimeSpan answerTimeout)
    {
        if (PosixPaths.Identity(socket) is null)
            return new PoolProbe(ProbeState.Absent, 0, $"no socket at {socket}");
        PoolClient client;
        try
        {
            client = PoolClient.Connect(socket);
        }
        catch (PoolUnavailableException e)
        {
            return new PoolProbe(ProbeState.Stale, 0, e.Message);
        }
        using (client)
        {
            uint uid = client.PeerUid, own = PeerCredentials.CurrentUid();
            if (uid != own)
                return new PoolProbe(ProbeState.Foreign, uid, $"{socket} is served by uid {uid}, not by this user (uid {own}); not using it");
            client.AnswerTimeout = answerTimeout;
            try
            {
                client.Send(PoolProtocol.Write(w => w.WriteString("op", "ping"))).Dispose();
                return new PoolProbe(ProbeState.Answers, uid, "");
            }
            catch (Exception e) when (e is IOException or ThawException or JsonException or System.Net.Sockets.SocketException or InvalidOperationException)
            {
                return new PoolProbe(ProbeState.Silent, uid, $"{socket} accepted a connection but did not answer ping ({e.Message})");
            }
        }
    }
}
