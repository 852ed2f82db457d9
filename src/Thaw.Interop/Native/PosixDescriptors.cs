using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using Core = Thaw.Interop.Native.Interop.ThawCore;

namespace Thaw.Interop.Native;

/// <summary>Descriptors passed over a connected Unix socket with one line of the pool protocol
/// (SCM_RIGHTS, bindings/thaw_core.h): the runtime's sockets carry no ancillary data.</summary>
internal static unsafe partial class PosixDescriptors
{
    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int CloseDescriptor(int fd);

    /// <summary>Closes a descriptor this process received or exported.</summary>
    public static void Close(int fd)
    {
        if (fd >= 0)
            CloseDescriptor(fd);
    }

    /// <summary>Sends <paramref name="line"/> and a newline with <paramref name="fds"/> attached.</summary>
    /// <exception cref="IOException">The peer went away, or did not make room within the timeout.</exception>
    public static void SendLine(Socket socket, string line, int[] fds, TimeSpan timeout)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(line + "\n");
        fixed (byte* b = bytes)
        fixed (int* f = fds)
        {
            int rc = Core.SendWithFds((int)socket.Handle, b, (ulong)bytes.Length, f, (uint)fds.Length, Milliseconds(timeout));
            if (rc < 0)
                throw new IOException(NativeErrors.LastMessage());
        }
    }

    /// <summary>Receives one line and the descriptors sent with it (at most <paramref name="maxFds"/>).</summary>
    /// <exception cref="IOException">The peer went away, sent too much, or did not answer within the timeout.</exception>
    public static (string Line, int[] Fds) ReceiveLine(Socket socket, int maxLineBytes, int maxFds, TimeSpan timeout)
    {
        byte[] buffer = new byte[maxLineBytes];
        int[] fds = new int[Math.Max(maxFds, 1)];
        fixed (byte* b = buffer)
        fixed (int* f = fds)
        {
            int rc = Core.ReceiveLineWithFds((int)socket.Handle, b, (ulong)buffer.Length, out ulong length, f, (uint)maxFds,
                out uint count, Milliseconds(timeout));
            if (rc < 0)
                throw new IOException(NativeErrors.LastMessage(), rc == -110 ? new SocketException((int)SocketError.TimedOut) : null);
            try
            {
                return (Encoding.UTF8.GetString(buffer, 0, (int)length), fds[..(int)count]);
            }
            catch
            {
                for (int i = 0; i < count; i++)
                    Close(fds[i]);
                throw;
            }
        }
    }

    private static int Milliseconds(TimeSpan t) => (int)Math.Clamp(t.TotalMilliseconds, 1, int.MaxValue);
}

/// <summary>The process's limit on open descriptors: a pool keeps one per chunk of every shared copy it holds.</summary>
public static partial class PosixLimits
{
    private const int RlimitNofile = 7;

    [StructLayout(LayoutKind.Sequential)]
    private struct Rlimit
    {
        public ulong Current;
        public ulong Maximum;
    }

    [LibraryImport("libc", EntryPoint = "getrlimit")]
    private static partial int GetLimit(int resource, out Rlimit limit);

    [LibraryImport("libc", EntryPoint = "setrlimit")]
    private static partial int SetLimit(int resource, in Rlimit limit);

    /// <summary>Raises the soft limit on open descriptors to the hard one; returns the limit now in force.</summary>
    public static long RaiseOpenFiles()
    {
        if (GetLimit(RlimitNofile, out Rlimit limit) != 0)
            return -1;
        if (limit.Current < limit.Maximum)
        {
            var raised = limit with { Current = limit.Maximum };
            if (SetLimit(RlimitNofile, raised) == 0)
                return (long)Math.Min(raised.Current, long.MaxValue);
        }
        return (long)Math.Min(limit.Current, long.MaxValue);
    }
}
