using System.Reflection;
using Google.Protobuf;
using Grpc.AspNetCore.Server.Model;
using Grpc.Core;
using Metering.Protocol.V1;

namespace Metering.Server.Hosting;

/// <summary>
/// Binds every service's methods as the generated code describes them, except that a request
/// whose bytes are no message of its type (garbage, or a string field that is not UTF-8) is
/// refused with INVALID_ARGUMENT and the reason MESSAGE_MALFORMED instead of gRPC's bare
/// UNKNOWN. grpc-dotnet parses a unary request before any interceptor or handler runs, so the
/// refusal has to come from the request's deserializer; this provider takes the place of
/// grpc-dotnet's own binder provider (<see cref="MeteringServer"/> swaps them).
/// </summary>
internal sealed class MalformedMessageRefusal<TService> : IServiceMethodProvider<TService>
    where TService : class
{
    public void OnServiceMethodDiscovery(ServiceMethodProviderContext<TService> context)
    {
        BindServiceMethodAttribute? bind = typeof(TService).GetCustomAttribute<BindServiceMethodAttribute>(inherit: true);
        if (bind is null)
        {
            return;
        }

        MethodInfo bindService = bind.BindType
            .GetMethods(BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static)
            .Single(method => method.Name == bind.BindMethodName
                && method.GetParameters() is [{ ParameterType: var binder }, _]
                && binder == typeof(ServiceBinderBase));
        // With no instance the generated code passes null handlers; each method's invoker is made
        // from the service type instead, so the call reaches the instance the host creates.
        bindService.Invoke(null, [new Binder(context), null]);
    }

    internal static Method<TRequest, TResponse> Refusing<TRequest, TResponse>(Method<TRequest, TResponse> method)
        where TRequest : class
        where TResponse : class
    {
        Func<DeserializationContext, TRequest> parse = method.RequestMarshaller.ContextualDeserializer;
        var requests = new Marshaller<TRequest>(method.RequestMarshaller.ContextualSerializer, context =>
        {
            try
            {
                return parse(context);
            }
            catch (InvalidProtocolBufferException e)
            {
                throw Errors.Refused(StatusCode.InvalidArgument, IngestRefusal.MessageMalformed,
                    $"the request is not a {typeof(TRequest).Name}: {e.Message}");
            }
        });
        return new Method<TRequest, TResponse>(method.Type, method.ServiceName, method.Name, requests, method.ResponseMarshaller);
    }

    private static TDelegate Invoker<TDelegate>(string name)
        where TDelegate : Delegate =>
        (typeof(TService).GetMethod(name, BindingFlags.Public | BindingFlags.Instance)
            ?? throw new InvalidOperationException($"{typeof(TService).Name} has no method {name}"))
        .CreateDelegate<TDelegate>();

    private sealed class Binder(ServiceMethodProviderContext<TService> context) : ServiceBinderBase
    {
        public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, UnaryServerMethod<TRequest, TResponse>? handler) =>
            context.AddUnaryMethod(Refusing(method), [], Invoker<UnaryServerMethod<TService, TRequest, TResponse>>(method.Name));

        public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, ClientStreamingServerMethod<TRequest, TResponse>? handler) =>
            context.AddClientStreamingMethod(Refusing(method), [], Invoker<ClientStreamingServerMethod<TService, TRequest, TResponse>>(method.Name));

        public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, ServerStreamingServerMethod<TRequest, TResponse>? handler) =>
            context.AddServerStreamingMethod(Refusing(method), [], Invoker<ServerStreamingServerMethod<TService, TRequest, TResponse>>(method.Name));

        public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, DuplexStreamingServerMethod<TRequest, TResponse>? handler) =>
            context.AddDuplexStreamingMethod(Refusing(method), [], Invoker<DuplexStreamingServerMethod<TService, TRequest, TResponse>>(method.Name));
    }
}
