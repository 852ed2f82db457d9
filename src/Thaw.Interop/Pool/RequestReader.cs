using System.Buffers;
using System.Diagnostics;
using System.IO.MemoryMappedFiles;
using System.Net.Sockets;

namespace Thaw.Interop.Pool;

/// <summary>What the pool lets its clients hold: connections, request memory across all of
/// them, and time (a request must arrive whole within <see cref="RequestTimeout"/>; a
/// connection with nothing to say is closed after <see cref="IdleTimeout"/>).</summary>
public sealed record PoolLimits
{
    /// <summary>Connections served at once; a further one is told to retry and closed.</summary>
    public int MaxConnections { get; init; } = 256;
    /// <summary>Request lines being read, plus what parsing them takes, summed over connections.</summary>
    public long MaxRequestBytes { get; init; } = 1L << 30;
    /// <summary>From a request's first byte to its newline, and for its answer to be taken.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Silence allowed between requests before the connection is closed.</summary>
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromMinutes(5);
}

/// <summary>Bytes of request memory shared by every connection: taken before a buffer grows,
/// given back when it shrinks or the connection ends, so the total never passes the limit.</summary>
internal sealed class RequestBudget(long limit)
{
    private long _used;

    public long Limit { get; } = limit;
    public long Used => Interlocked.Read(ref _used);

    public bool TryTake(long bytes)
    {
        long used = Interlocked.Add(ref _used, bytes);
        if (used <= Limit)
            return true;
        Interlocked.Add(ref _used, -bytes);
        return false;
    }

    public void Give(long bytes) => Interlocked.Add(ref _used, -bytes);
}

/// <summary>A client the pool stops serving, told why before the connection closes: over a
/// limit of <see cref="PoolLimits"/> (kind OutOfHostMemory: retry later, or restore from the
/// file) or too slow or too long (InvalidArgument).</summary>
internal sealed class PoolRefusalException(ThawErrorKind kind, string message) : ThawException(kind, message)
{
    public static PoolRefusalException Busy(string message) => new(ThawErrorKind.OutOfHostMemory, message);
    public static PoolRefusalException Bad(string message) => new(ThawErrorKind.InvalidArgument, message);
}

/// <summary>Reads newline-terminated requests from one connection into a buffer that grows
/// only with bytes taken from the shared <see cref="RequestBudget"/>, and shrinks back after a
/// long request. The buffer is mapped memory, unmapped when released, so a burst of long lines
/// leaves nothing behind (the GC would keep large arrays committed long after).</summary>
internal sealed class RequestReader : IDisposable
{
    private const int SmallBytes = 16 << 10;
    private readonly Socket _socket;
    private readonly RequestBudget _budget;
    private readonly PoolLimits _limits;
    private MappedBuffer? _mapped;
    private Memory<byte> _buffer = Memory<byte>.Empty;
    private int _start, _end, _scanned;
    private readonly Stopwatch _requestClock = new();

    /// <summary>Silence between requests is allowed without limit (a connection holding a publication).</summary>
    public bool MayIdle { get; set; }

    public RequestReader(Socket socket, RequestBudget budget, PoolLimits limits)
    {
        _socket = socket;
        _budget = budget;
        _limits = limits;
        Resize(SmallBytes);
    }

    /// <summary>The next request line (without its newline), valid until the next call; null
    /// when the client closed the connection (a half-sent line is dropped).</summary>
    /// <exception cref="PoolRefusalException">The line is too long, request memory is exhausted, or the client is too slow.</exception>
    /// <exception cref="OperationCanceledException">The pool is stopping.</exception>
    public async ValueTask<ReadOnlyMemory<byte>?> NextAsync(CancellationToken stop)
    {
        if (_start == _end && _buffer.Length > SmallBytes)
            Resize(SmallBytes); // a long request is over: give its memory back
        while (true)
        {
            int newline = _buffer.Span[_scanned.._end].IndexOf((byte)'\n');
            if (newline >= 0)
            {
                newline += _scanned;
                ReadOnlyMemory<byte> line = _buffer[_start..newline];
                _start = _scanned = newline + 1;
                if (_start < _end)
                    _requestClock.Restart(); // the next request has begun arriving
                return line;
            }
            _scanned = _end;
            if (_end - _start > PoolProtocol.MaxLineBytes)
                throw PoolRefusalException.Bad($"request line longer than {PoolProtocol.MaxLineBytes} bytes");
            if (_end == _buffer.Length)
                MakeRoom();
            TimeSpan wait = _start == _end ? (MayIdle ? Timeout.InfiniteTimeSpan : _limits.IdleTimeout) : _limits.RequestTimeout - _requestClock.Elapsed;
            if (wait <= TimeSpan.Zero && wait != Timeout.InfiniteTimeSpan)
                throw PoolRefusalException.Bad($"the request did not arrive within {_limits.RequestTimeout.TotalSeconds:0.#} s");
            int received;
            using (var deadline = CancellationTokenSource.CreateLinkedTokenSource(stop))
            {
                deadline.CancelAfter(wait);
                try
                {
                    received = await _socket.ReceiveAsync(_buffer[_end..], SocketFlags.None, deadline.Token);
                }
                catch (OperationCanceledException) when (!stop.IsCancellationRequested)
                {
                    throw PoolRefusalException.Bad(_start == _end
                        ? $"idle for {_limits.IdleTimeout.TotalSeconds:0.#} s"
                        : $"the request did not arrive within {_limits.RequestTimeout.TotalSeconds:0.#} s");
                }
            }
            if (received == 0)
                return null;
            if (_start == _end)
                _requestClock.Restart();
            _end += received;
        }
    }

    /// <summary>Moves the partial line to the front, or grows the buffer (up to one maximal
    /// line and its newline) with memory taken from the budget.</summary>
    private void MakeRoom()
    {
        if (_start > 0)
        {
            _buffer.Span[_start.._end].CopyTo(_buffer.Span);
            _end -= _start;
            _scanned -= _start;
            _start = 0;
            if (_end < _buffer.Length)
                return;
        }
        int grown = (int)Math.Min((long)_buffer.Length * 2, PoolProtocol.MaxLineBytes + 1L);
        Resize(grown);
    }

    private void Resize(int length)
    {
        int delta = length - _buffer.Length;
        if (delta > 0 && !_budget.TryTake(delta))
            throw PoolRefusalException.Busy($"the pool is short of request memory ({_budget.Used} of {_budget.Limit} bytes in use); retry later");
        MappedBuffer resized;
        try
        {
            resized = new MappedBuffer(length);
        }
        catch (IOException)
        {
            if (delta > 0)
                _budget.Give(delta);
            throw PoolRefusalException.Busy($"the pool cannot map {length} bytes for a request; retry later");
        }
        _buffer.Span[_start.._end].CopyTo(resized.Memory.Span);
        _end -= _start;
        _scanned -= _start;
        _start = 0;
        ((IDisposable?)_mapped)?.Dispose();
        _mapped = resized;
        _buffer = resized.Memory;
        if (delta < 0)
            _budget.Give(-delta);
    }

    public void Dispose()
    {
        _budget.Give(_buffer.Length);
        ((IDisposable?)_mapped)?.Dispose();
        _mapped = null;
        _buffer = Memory<byte>.Empty;
    }
}

/// <summary>Anonymous mapped memory as <see cref="Memory{T}"/>: returned to the system when disposed.</summary>
internal sealed unsafe class MappedBuffer : MemoryManager<byte>
{
    private readonly MemoryMappedFile _file;
    private readonly MemoryMappedViewAccessor _view;
    private readonly byte* _pointer;
    private readonly int _length;

    public MappedBuffer(int length)
    {
        _file = MemoryMappedFile.CreateNew(null, length, MemoryMappedFileAccess.ReadWrite);
        _view = _file.CreateViewAccessor(0, length);
        byte* p = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        _pointer = p + _view.PointerOffset;
        _length = length;
    }

    public override Span<byte> GetSpan() => new(_pointer, _length);
    public override MemoryHandle Pin(int elementIndex = 0) => new(_pointer + elementIndex);
    public override void Unpin() { }

    protected override void Dispose(bool disposing)
    {
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _file.Dispose();
    }
}
