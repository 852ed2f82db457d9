using Thaw.Interop.Native;
using Thaw.Interop.Restore;

namespace Thaw.Interop.Pool;

/// <summary>Where the automatic pool was found (its socket), or why a restore must use the file instead.</summary>
public sealed record AutoPoolResult(string? Socket, string? Error)
{
    /// <summary>A pool answers on <paramref name="socket"/>.</summary>
    public static AutoPoolResult Found(string socket) => new(socket, null);
    /// <summary>No pool to use, and why.</summary>
    public static AutoPoolResult Refused(string why) => new(null, why);
}

/// <summary>Finds this user's automatic pool, or starts it (docs/POOL.md, "Automatic mode"):
/// the private directory is checked, a live socket of ours is used, another user's is refused;
/// otherwise, under an exclusive lock so that racing processes start one pool, a stale socket is
/// removed and `thaw pool serve --auto` is started detached and waited for until it answers.</summary>
public static class AutoPool
{
    /// <summary>How long a probe waits for ping's answer.</summary>
    public static TimeSpan AnswerTimeout { get; set; } = TimeSpan.FromSeconds(2);
    /// <summary>How long a process waits for another that is starting the pool.</summary>
    public static TimeSpan LockTimeout { get; set; } = TimeSpan.FromSeconds(20);
    /// <summary>How long a started pool may take to answer.</summary>
    public static TimeSpan StartTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>The socket of a pool of ours that answers, started for <paramref name="kind"/>:<paramref name="ordinal"/>
    /// when none does; or why not (the caller logs it once and restores from the file).</summary>
    public static AutoPoolResult FindOrStart(DeviceKind kind, int ordinal)
    {
        string directory = AutoPoolDirectory.Choose();
        if (AutoPoolDirectory.Prepare(directory) is { } unsafeDirectory)
            return AutoPoolResult.Refused($"the automatic pool is refused: {unsafeDirectory}");
        string socket = Path.Combine(directory, AutoPoolDirectory.SocketName);
        PoolProbe probe = PoolProbe.Check(socket, AnswerTimeout);
        return probe.State switch
        {
            ProbeState.Answers => AutoPoolResult.Found(socket),
            ProbeState.Foreign => AutoPoolResult.Refused(probe.Detail),
            _ => StartUnderLock(directory, socket, kind, ordinal),
        };
    }

    private static AutoPoolResult StartUnderLock(string directory, string socket, DeviceKind kind, int ordinal)
    {
        string lockPath = Path.Combine(directory, AutoPoolDirectory.LockName);
        using FileStream? held = Lock(lockPath, LockTimeout, out string? lockError);
        if (held is null)
            return AutoPoolResult.Refused(lockError!);
        // Another process may have started it while this one waited for the lock.
        PoolProbe probe = PoolProbe.Check(socket, AnswerTimeout);
        switch (probe.State)
        {
            case ProbeState.Answers:
                return AutoPoolResult.Found(socket);
            case ProbeState.Foreign or ProbeState.Silent:
                return AutoPoolResult.Refused(probe.Detail);
            case ProbeState.Stale:
                File.Delete(socket);
                break;
        }
        return Start(directory, socket, kind, ordinal);
    }

    private static AutoPoolResult Start(string directory, string socket, DeviceKind kind, int ordinal)
    {
        if (ThawExecutable.Locate(out string? why) is not { } executable)
            return AutoPoolResult.Refused($"cannot start the automatic pool: {why}");
        string log = Path.Combine(directory, AutoPoolDirectory.LogName);
        int pid;
        try
        {
            // By identity, not ordinal: the pool does not inherit CUDA_VISIBLE_DEVICES, so our
            // ordinal may name another GPU there.
            string device = ThawEngine.DeviceIdentity(kind, ordinal);
            string[] argv = [executable, "pool", "serve", "--auto", "--device", kind.ToString().ToLowerInvariant(), "--device-id", device];
            pid = PosixPaths.SpawnDetached(argv, AutoPoolEnvironment.Withheld, log);
        }
        catch (Exception e) when (e is IOException or ThawException)
        {
            return AutoPoolResult.Refused($"cannot start the automatic pool: {e.Message}");
        }
        return WaitUntilAnswering(socket, pid, log);
    }

    private static AutoPoolResult WaitUntilAnswering(string socket, int pid, string log)
    {
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (waited.Elapsed < StartTimeout)
        {
            if (PoolProbe.Check(socket, AnswerTimeout) is { State: ProbeState.Answers })
                return AutoPoolResult.Found(socket);
            if (!IsAlive(pid))
                return AutoPoolResult.Refused($"the automatic pool (pid {pid}) exited while starting: {LastLine(log)} (log: {log})");
            Thread.Sleep(25);
        }
        return AutoPoolResult.Refused($"the automatic pool (pid {pid}) did not answer on {socket} within {StartTimeout.TotalSeconds:0} s (log: {log})");
    }

    /// <summary>An exclusive flock on <paramref name="path"/> (FileShare.None), retried until <paramref name="timeout"/>.</summary>
    private static FileStream? Lock(string path, TimeSpan timeout, out string? error)
    {
        var options = new FileStreamOptions { Mode = FileMode.OpenOrCreate, Access = FileAccess.ReadWrite, Share = FileShare.None };
        if (!OperatingSystem.IsWindows())
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        var waited = System.Diagnostics.Stopwatch.StartNew();
        for (;;)
        {
            try
            {
                error = null;
                return new FileStream(path, options);
            }
            catch (IOException e) when (waited.Elapsed < timeout && e is not FileNotFoundException and not DirectoryNotFoundException)
            {
                Thread.Sleep(20);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                error = $"the automatic pool's lock {path} was not free within {timeout.TotalSeconds:0} s ({e.Message})";
                return null;
            }
        }
    }

    /// <summary>Whether the process lives (a zombie does not: the pool is not our child, but a
    /// container's init may not reap it).</summary>
    private static bool IsAlive(int pid)
    {
        try
        {
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            int end = stat.LastIndexOf(')');
            return end > 0 && end + 2 < stat.Length && stat[end + 2] != 'Z';
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static string LastLine(string log)
    {
        try
        {
            return File.ReadLines(log).LastOrDefault(l => l.Trim().Length > 0)?.Trim() ?? "its log is empty";
        }
        catch (IOException)
        {
            return "no log";
        }
    }
}
