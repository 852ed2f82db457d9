using System.Runtime.InteropServices;
using System.Text;
using Core = Thaw.Interop.Native.Interop.ThawCore;

namespace Thaw.Interop.Native;

/// <summary>The core's lstat-based path checks and its detached start (native/cuda/src/paths.c, spawn.c).</summary>
internal static unsafe class PosixPaths
{
    /// <summary>Null when <paramref name="path"/> is a directory (not a link) of ours with mode 0700 or
    /// stricter (made so when absent and <paramref name="create"/>); else why not, naming the path.</summary>
    public static string? PrivateDirectoryFault(string path, bool create) =>
        Core.PrivateDirectory(path, create ? 1 : 0) == 0 ? null : NativeErrors.LastMessage();

    /// <summary>The device, inode and change time of the path itself (a later file at the path differs
    /// even where its inode number is reused), or null when it is gone.</summary>
    public static (ulong Device, ulong Inode, ulong Changed)? Identity(string path) =>
        Core.PathIdentity(path, out ulong device, out ulong inode, out ulong changed) == 0 ? (device, inode, changed) : null;

    /// <summary>A socket listening on <paramref name="path"/> whose file the runtime will not delete
    /// when it is closed (the caller decides); see native/cuda/src/listen.c.</summary>
    /// <exception cref="IOException">The path is taken, too long, or not writable.</exception>
    public static System.Net.Sockets.Socket Listen(string path, int backlog)
    {
        NativeErrors.Check(Core.UnixListen(path, backlog, out int fd));
        return new System.Net.Sockets.Socket(new System.Net.Sockets.SafeSocketHandle(fd, ownsHandle: true));
    }

    /// <summary>The file the core is linked into (libthaw.so, or the executable), or null when it cannot tell.</summary>
    public static string? ModulePath()
    {
        byte[] buffer = new byte[4096];
        fixed (byte* p = buffer)
        {
            int length = Core.ModulePath(p, (nuint)buffer.Length);
            return length <= 0 || length >= buffer.Length ? null : Encoding.UTF8.GetString(buffer, 0, length);
        }
    }

    /// <summary>Starts <paramref name="argv"/> (argv[0] an absolute path) in a session of its own, in /,
    /// its output appended to <paramref name="logPath"/>, with this process's environment less the
    /// variables named in <paramref name="withheld"/>; returns its pid.</summary>
    /// <exception cref="IOException">Fork or exec failed (FileNotFoundException: no such program).</exception>
    public static int SpawnDetached(IReadOnlyList<string> argv, IReadOnlyList<string> withheld, string logPath)
    {
        // The environment itself is read by the core from environ: enumerating it here would freeze
        // .NET's copy, and a host (Python) changing a variable later would no longer be seen.
        var strings = new nint[argv.Count + 1 + withheld.Count + 1];
        try
        {
            for (int i = 0; i < argv.Count; i++)
                strings[i] = Marshal.StringToCoTaskMemUTF8(argv[i]);
            for (int i = 0; i < withheld.Count; i++)
                strings[argv.Count + 1 + i] = Marshal.StringToCoTaskMemUTF8(withheld[i]);
            fixed (nint* p = strings)
            {
                NativeErrors.Check(Core.SpawnDetached((byte**)p, (byte**)(p + argv.Count + 1), logPath, out int pid));
                return pid;
            }
        }
        finally
        {
            foreach (nint s in strings)
                Marshal.FreeCoTaskMem(s);
        }
    }
}
