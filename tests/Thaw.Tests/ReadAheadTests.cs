using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Thaw.Interop.Pool;

namespace Thaw.Tests;

/// <summary>The fill's read-ahead brings a file that is not in the page cache into it ahead of the
/// fill's own reads (checked with mincore; skipped where the file system keeps every page).</summary>
[TestFixture, Platform("Linux")]
public sealed unsafe partial class ReadAheadTests
{
    [LibraryImport("libc.so.6", EntryPoint = "mincore")]
    private static partial int Mincore(byte* address, nuint length, byte* vector);

    private static double Resident(string path, long length)
    {
        using var map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        using var view = map.CreateViewAccessor(0, length, MemoryMappedFileAccess.Read);
        byte* p = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        try
        {
            long pages = (length + Environment.SystemPageSize - 1) / Environment.SystemPageSize;
            var vector = new byte[pages];
            fixed (byte* v = vector)
                Assert.That(Mincore(p, (nuint)length, v), Is.Zero);
            return vector.Count(b => (b & 1) != 0) / (double)pages;
        }
        finally
        {
            view.SafeMemoryMappedViewHandle.ReleasePointer();
        }
    }

    [Test]
    public void AnEvictedFileIsReadIntoThePageCacheAhead()
    {
        using var files = new TestFiles();
        string path = files.PathOf("cold.bin");
        const long length = 32L << 20;
        using (var f = new FileStream(path, FileMode.Create))
        {
            f.Write(new byte[length]);
            f.Flush(flushToDisk: true);
        }
        using (SafeFileHandle h = File.OpenHandle(path))
            ReadAhead.PosixFadvise(h, 0, 0, ReadAhead.DontNeed);
        if (Resident(path, length) > 0.1)
            Assert.Inconclusive("this file system keeps the pages: eviction cannot be checked here");
        ReadAhead.Start(path, 0, length, CancellationToken.None).Wait();
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (Resident(path, length) < 0.9 && waited.Elapsed < TimeSpan.FromSeconds(20))
            Thread.Sleep(20); // the advice only starts the reads
        Assert.That(Resident(path, length), Is.GreaterThan(0.9));
    }
}
