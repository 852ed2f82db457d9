using BenchmarkDotNet.Running;

// dotnet run -c Release --project bench/Thaw.Benchmarks -- --filter '*' --job short
BenchmarkSwitcher.FromAssembly(typeof(Thaw.Benchmarks.HeaderBenchmarks).Assembly).Run(args);
