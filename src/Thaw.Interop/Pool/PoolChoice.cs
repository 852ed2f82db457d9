using Thaw.Interop.Restore;

namespace Thaw.Interop.Pool;

/// <summary>Whether a restore goes through a pool: none, the user's automatic pool (found or
/// started, docs/POOL.md "Automatic mode"), or the pool serving on a named socket.</summary>
public enum PoolMode
{
    /// <summary>Restore from the file.</summary>
    Off,
    /// <summary>Through this user's automatic pool, started when none answers.</summary>
    Auto,
    /// <summary>Through the pool on a named socket.</summary>
    Socket,
}

/// <summary>A pool mode, with the socket when the mode is <see cref="PoolMode.Socket"/>
/// (null there: <see cref="PoolProtocol.DefaultSocketPath"/>).</summary>
public sealed record PoolChoice(PoolMode Mode, string? Socket = null)
{
    /// <summary>The variable read when the caller says nothing: auto, off, or a socket path.</summary>
    public const string EnvironmentVariable = "THAW_POOL";

    /// <summary>No pool.</summary>
    public static readonly PoolChoice Off = new(PoolMode.Off);
    /// <summary>The automatic pool.</summary>
    public static readonly PoolChoice Auto = new(PoolMode.Auto);

    /// <summary>"auto", "off", or a socket path (the words win: name a socket called auto as ./auto).</summary>
    public static PoolChoice Parse(string text) => text switch
    {
        "auto" => Auto,
        "off" => Off,
        _ => new PoolChoice(PoolMode.Socket, text),
    };

    /// <summary>The one policy: what the caller said, else <c>$THAW_POOL</c>, else the automatic pool
    /// for a CUDA destination and none for the mock device (CPU users and tests never start a daemon).</summary>
    public static PoolChoice Decide(PoolChoice? argument, string? environment, DeviceKind destination)
    {
        if (argument is not null)
            return argument;
        if (!string.IsNullOrWhiteSpace(environment))
            return Parse(environment.Trim());
        return destination == DeviceKind.Cuda ? Auto : Off;
    }

    /// <summary><see cref="Decide(PoolChoice?, string?, DeviceKind)"/> with this process's <c>$THAW_POOL</c>.</summary>
    public static PoolChoice Decide(PoolChoice? argument, DeviceKind destination) =>
        Decide(argument, Environment.GetEnvironmentVariable(EnvironmentVariable), destination);

    /// <summary>The socket to restore through: none for <see cref="PoolMode.Off"/> (Socket and Error
    /// null), the named or default one, or the automatic pool's, found or started for the
    /// destination's device; or why the automatic pool cannot be used.</summary>
    public AutoPoolResult Locate(DeviceKind destination, int ordinal) => Mode switch
    {
        PoolMode.Off => new AutoPoolResult(null, null),
        PoolMode.Socket => AutoPoolResult.Found(Socket ?? PoolProtocol.DefaultSocketPath()),
        _ => AutoPool.FindOrStart(destination, ordinal),
    };
}
