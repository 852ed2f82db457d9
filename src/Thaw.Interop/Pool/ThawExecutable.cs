using Thaw.Interop.Native;

namespace Thaw.Interop.Pool;

/// <summary>Which `thaw` executable starts the automatic pool: <c>$THAW_EXECUTABLE</c>, else the one
/// beside libthaw.so (the wheel's thaw_vllm/lib + thaw_vllm/bin, or build/publish/pybridge +
/// build/publish/cli), else the running CLI itself, else `thaw` on PATH.</summary>
public static class ThawExecutable
{
    /// <summary>Names the executable to start, overriding the search.</summary>
    public const string EnvironmentVariable = "THAW_EXECUTABLE";

    /// <summary>The executable's absolute path, or null and why none was found.</summary>
    public static string? Locate(out string? why)
    {
        why = null;
        string? configured = Environment.GetEnvironmentVariable(EnvironmentVariable);
        if (!string.IsNullOrEmpty(configured))
        {
            string full = Path.GetFullPath(configured);
            if (IsExecutable(full))
                return full;
            why = $"{EnvironmentVariable}={configured} is not an executable file";
            return null;
        }
        List<string> near = Beside().ToList();
        string? found = near.Concat(OnPath()).FirstOrDefault(IsExecutable);
        if (found is null)
            why = $"no thaw executable found (tried {string.Join(", ", near.Append("thaw on PATH"))}); set {EnvironmentVariable}";
        return found;
    }

    private static IEnumerable<string> Beside()
    {
        string? module = PosixPaths.ModulePath();
        if (module is not null && Path.GetFileName(module).StartsWith("libthaw", StringComparison.Ordinal) && Path.IsPathRooted(module))
        {
            string folder = Path.GetDirectoryName(Path.GetDirectoryName(module)!)!;
            yield return Path.Combine(folder, "bin", "thaw");
            yield return Path.Combine(folder, "cli", "thaw");
        }
        string? self = Environment.ProcessPath;
        if (self is not null && Path.GetFileName(self) == "thaw")
            yield return self;
    }

    private static IEnumerable<string> OnPath()
    {
        foreach (string dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
            if (Path.IsPathRooted(dir))
                yield return Path.Combine(dir, "thaw");
    }

    private static bool IsExecutable(string path) =>
        !OperatingSystem.IsWindows() && File.Exists(path) && (File.GetUnixFileMode(path) & (UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute)) != 0;
}
